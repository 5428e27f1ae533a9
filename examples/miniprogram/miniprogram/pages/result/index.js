// The payment result: what the backend says, never what the payment sheet said. The order is
// polled until it leaves CREATED/PAYING; a slow notification is covered by the backend, which
// asks WeChat (orderquery) when a client polls a pending order.
const { statusText, yuan } = require('../../utils/errors')
const { waitForOutcome } = require('../../utils/pay')

const TITLES = {
  PAID: '支付成功',
  CLOSED: '订单已关闭',
}

Component({
  data: { orderNo: '', status: '', title: '正在确认支付结果…', amount: '', error: '' },
  methods: {
    onLoad(query) {
      this.setData({ orderNo: query.order_no })
      return this.refresh()
    },
    async refresh() {
      try {
        const order = await waitForOutcome(this.data.orderNo, this.pollOptions || {})
        this.setData({
          status: order.status,
          amount: yuan(order.amount_fen),
          title: TITLES[order.status] || (order.status === 'CREATED' || order.status === 'PAYING'
            ? '支付结果确认中，请稍后在“我的订单”查看'
            : statusText(order)),
        })
      } catch (e) {
        this.setData({ error: e.text || String(e) })
      }
    },
  },
})
