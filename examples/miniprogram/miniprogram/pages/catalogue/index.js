// The catalogue: products from `GET /api/products`, added to the cart, then to checkout.
// (Pages are built with the Component constructor, which WeChat supports for pages; it lets
// the same code run in the component-test harness.)
const api = require('../../utils/api')
const { yuan } = require('../../utils/errors')

Component({
  data: { products: [], count: 0, error: '' },
  methods: {
    onLoad() {
      return this.load()
    },
    async load() {
      try {
        const products = await api.get('/api/products')
        this.setData({
          products: products.filter((p) => p.active !== false).map((p) => ({ ...p, price: yuan(p.price_fen) })),
          error: '',
        })
      } catch (e) {
        this.setData({ error: e.text || String(e) })
      }
    },
    add(e) {
      const id = e.currentTarget.dataset.id
      const product = this.data.products.find((p) => p.id === id)
      if (!product) return
      const cart = getApp().globalData.cart
      const line = cart[id] || { product, quantity: 0 }
      line.quantity += 1
      cart[id] = line
      this.setData({ count: Object.values(cart).reduce((n, l) => n + l.quantity, 0) })
    },
    checkout() {
      if (this.data.count === 0) {
        wx.showToast({ title: '请先选择商品', icon: 'none' })
        return
      }
      wx.navigateTo({ url: '/pages/checkout/index' })
    },
  },
})
