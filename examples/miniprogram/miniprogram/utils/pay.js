// Paying an order and learning its outcome.
//
// `wx.requestPayment` only says what happened on the phone: `requestPayment:ok` is not proof of
// payment (WeChat's documentation says the same). The outcome is the backend's order status,
// which it learns from the payment notification or by asking WeChat (orderquery).
const api = require('./api')

function requestPayment(params) {
  return new Promise((resolve) => {
    wx.requestPayment({
      ...params,
      success: (res) => resolve({ ok: true, errMsg: res.errMsg }),
      fail: (res) => {
        const errMsg = (res && res.errMsg) || 'requestPayment:fail'
        resolve({ ok: false, cancelled: errMsg.indexOf('cancel') >= 0, errMsg })
      },
    })
  })
}

// Asks the backend for payment parameters, then opens WeChat's payment sheet with exactly them.
async function payOrder(orderNo) {
  const params = await api.post(`/api/orders/${orderNo}/pay`)
  return requestPayment(params)
}

const PENDING = ['CREATED', 'PAYING']

// Polls the order until it leaves CREATED/PAYING or `timeoutMs` passes; answers the last view.
async function waitForOutcome(orderNo, { intervalMs = 1000, timeoutMs = 15000 } = {}) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const order = await api.get(`/api/orders/${orderNo}`)
    if (PENDING.indexOf(order.status) < 0 || Date.now() >= deadline) return order
    await new Promise((resolve) => setTimeout(resolve, intervalMs))
  }
}

module.exports = { payOrder, waitForOutcome, PENDING }
