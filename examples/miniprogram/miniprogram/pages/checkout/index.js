// Checkout: the cart becomes an order (`POST /api/orders`; the backend computes the amount), then
// WeChat's payment sheet opens with the parameters of `POST /api/orders/{no}/pay`.
// A cancelled payment keeps the order: it stays payable here and in "my orders".
const api = require('../../utils/api')
const { yuan } = require('../../utils/errors')
const { payOrder } = require('../../utils/pay')

Component({
  data: { lines: [], total: '0.00', orderNo: '', notice: '', error: '', busy: false },
  methods: {
    onLoad() {
      const lines = Object.values(getApp().globalData.cart).map((l) => ({
        id: l.product.id,
        name: l.product.name,
        quantity: l.quantity,
        price: yuan(l.product.price_fen),
      }))
      const totalFen = Object.values(getApp().globalData.cart).reduce((n, l) => n + l.product.price_fen * l.quantity, 0)
      this.setData({ lines, total: yuan(totalFen) })
    },
    async submit() {
      if (this.data.busy) return
      this.setData({ busy: true, error: '', notice: '' })
      try {
        let orderNo = this.data.orderNo
        if (!orderNo) {
          const items = this.data.lines.map((l) => ({ product_id: l.id, quantity: l.quantity }))
          const order = await api.post('/api/orders', { items })
          orderNo = order.order_no
          getApp().globalData.cart = {}
          this.setData({ orderNo, total: yuan(order.amount_fen) })
        }
        const outcome = await payOrder(orderNo)
        if (outcome.ok) {
          wx.redirectTo({ url: `/pages/result/index?order_no=${orderNo}` })
        } else if (outcome.cancelled) {
          this.setData({ notice: '已取消支付，订单已保留，可稍后在“我的订单”中继续支付' })
        } else {
          this.setData({ error: '支付未完成，请稍后重试' })
        }
      } catch (e) {
        this.setData({ error: e.text || String(e) })
      } finally {
        this.setData({ busy: false })
      }
    },
  },
})
