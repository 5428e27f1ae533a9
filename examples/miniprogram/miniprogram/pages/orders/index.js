// My orders (`GET /api/orders`), with their payment and refund status; an unpaid order can be
// paid from here (for example after the payment sheet was cancelled).
const api = require('../../utils/api')
const { statusText, yuan } = require('../../utils/errors')
const { payOrder, PENDING } = require('../../utils/pay')

Component({
  data: { orders: [], error: '', notice: '' },
  methods: {
    onLoad() {
      return this.load()
    },
    onShow() {
      return this.load()
    },
    async load() {
      try {
        const orders = await api.get('/api/orders')
        this.setData({
          orders: orders.map((o) => ({
            orderNo: o.order_no,
            amount: yuan(o.amount_fen),
            status: o.status,
            statusText: statusText(o),
            payable: PENDING.indexOf(o.status) >= 0,
          })),
          error: '',
        })
      } catch (e) {
        this.setData({ error: e.text || String(e) })
      }
    },
    async pay(e) {
      const orderNo = e.currentTarget.dataset.no
      this.setData({ notice: '', error: '' })
      try {
        const outcome = await payOrder(orderNo)
        if (outcome.ok) {
          wx.navigateTo({ url: `/pages/result/index?order_no=${orderNo}` })
        } else if (outcome.cancelled) {
          this.setData({ notice: '已取消支付，订单已保留' })
        }
      } catch (err) {
        this.setData({ error: err.text || String(err) })
        await this.load()
      }
    },
  },
})
