const config = require('./config')

App({
  globalData: {
    baseUrl: config.baseUrl,
    // The cart: product id -> { product, quantity }. Kept in memory: an order is made from it.
    cart: {},
  },
})
