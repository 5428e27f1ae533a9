// The seed's first flow as the customer lives it, against a live `wxpay serve` and its simulator.
const path = require('path')
const { Phone, httpJson, sim, backend, until, text, snapshot, ROOT } = require('./harness')

const api = require(path.join(ROOT, 'utils/api'))
api.retry.delaysMs = [50, 100, 200] // the pages' back-off, shortened for the test

let seq = 0
function newPhone() {
  seq += 1
  const phone = new Phone(`mp-user-${process.pid}-${Date.now()}-${seq}`)
  phone.install()
  return phone
}

async function order(phone, no) {
  const token = phone.storage.get(api.TOKEN_KEY)
  const res = await httpJson('GET', backend(`/api/orders/${no}`), undefined, { Authorization: `Bearer ${token}` })
  return res.data
}

// Catalogue → two products in the cart → checkout page, ready to pay.
async function fillCart(phone) {
  const catalogue = await phone.open('catalogue')
  expect(catalogue.dom.textContent).toContain('美式咖啡')
  await phone.tap(catalogue, 'add-coffee')
  await phone.tap(catalogue, 'add-cola')
  await phone.tap(catalogue, 'add-cola')
  snapshot(catalogue, '1-catalogue', '商品')
  await phone.tap(catalogue, 'checkout')
  await phone.navigatedTo('checkout')
  const checkout = await phone.open('checkout')
  expect(text(checkout, 'total')).toBe('¥18.00') // 12.00 + 2 × 3.00
  snapshot(checkout, '2-checkout', '确认订单')
  return checkout
}

afterEach(async () => {
  await httpJson('DELETE', sim('/sim/faults'))
})

test('first login, buy two products, pay, see PAID', async () => {
  const phone = newPhone()
  const checkout = await fillCart(phone)
  expect(phone.logins).toBe(1)

  await phone.tap(checkout, 'pay')
  const { order_no } = await phone.navigatedTo('result')

  // wx.requestPayment got exactly what the backend's pay call answered.
  const pay = phone.exchanges.find((x) => x.path === `/api/orders/${order_no}/pay`)
  expect(pay.statusCode).toBe(200)
  expect(phone.paymentCalls).toEqual([pay.data])

  const result = await phone.open('result', { order_no })
  expect(text(result, 'title')).toBe('支付成功')
  snapshot(result, '3-result', '支付结果')
  const paid = await order(phone, order_no)
  expect(paid.status).toBe('PAID')
  expect(paid.amount_fen).toBe(1800)
  expect(paid.items.map((i) => [i.product_id, i.quantity])).toEqual([['coffee', 1], ['cola', 2]])
})

test('cancel at the payment sheet keeps the order payable; paying later from my orders works', async () => {
  const phone = newPhone()
  const checkout = await fillCart(phone)
  phone.paymentActions.push('cancel')
  await phone.tap(checkout, 'pay')
  await until('the cancel notice', () => text(checkout, 'notice'))
  expect(text(checkout, 'notice')).toContain('已取消支付')
  snapshot(checkout, '4-cancelled', '确认订单')
  expect(phone.navigations).toEqual([])

  const orderNo = checkout.instance.data.orderNo
  expect(['CREATED', 'PAYING']).toContain((await order(phone, orderNo)).status)

  const orders = await phone.open('orders')
  expect(text(orders, `status-${orderNo}`)).toBe('待支付')
  snapshot(orders, '5-my-orders', '我的订单')
  await phone.tap(orders, `pay-${orderNo}`)
  const { order_no } = await phone.navigatedTo('result')
  expect(order_no).toBe(orderNo)
  const result = await phone.open('result', { order_no })
  expect(text(result, 'title')).toBe('支付成功')
  expect(phone.paymentCalls.length).toBe(2)

  await orders.instance.onShow()
  expect(text(orders, `status-${orderNo}`)).toBe('已支付')
  expect(orders.querySelector(`#pay-${orderNo}`)).toBeFalsy()
})

test('a session that expired mid-flow is renewed by logging in again, once', async () => {
  const phone = newPhone()
  const checkout = await fillCart(phone)
  // The backend no longer knows the phone's token (expired, or its cache was flushed).
  phone.storage.set(api.TOKEN_KEY, 'f'.repeat(64))

  await phone.tap(checkout, 'pay')
  const { order_no } = await phone.navigatedTo('result')
  expect(phone.exchanges.filter((x) => x.data && x.data.code === 'SESSION_EXPIRED').length).toBe(1)
  expect(phone.logins).toBe(2)
  expect(phone.storage.get(api.TOKEN_KEY)).not.toBe('f'.repeat(64))
  const result = await phone.open('result', { order_no })
  expect(text(result, 'title')).toBe('支付成功')
})

test('WECHAT_UNAVAILABLE once: the page retries and the payment goes through', async () => {
  const phone = newPhone()
  const checkout = await fillCart(phone)
  // WeChat answers unifiedorder with SYSTEMERROR until the page has seen one refusal.
  await httpJson('POST', sim('/sim/faults'), { global: { api_error_rate: 1.0, api_endpoint: '/pay/unifiedorder' } })
  phone.onResponse = async (x) => {
    if (x.data && x.data.code === 'WECHAT_UNAVAILABLE') await httpJson('DELETE', sim('/sim/faults'))
  }

  await phone.tap(checkout, 'pay')
  const { order_no } = await phone.navigatedTo('result')
  const unavailable = phone.exchanges.filter((x) => x.data && x.data.code === 'WECHAT_UNAVAILABLE')
  expect(unavailable.length).toBe(1)
  expect(unavailable[0].path).toBe(`/api/orders/${order_no}/pay`)
  const result = await phone.open('result', { order_no })
  expect(text(result, 'title')).toBe('支付成功')
})

test('an error the page cannot fix is shown in Chinese, with the backend code kept', async () => {
  const phone = newPhone()
  const checkout = await fillCart(phone)
  checkout.instance.setData({ lines: [{ id: 'no-such-product', name: 'x', quantity: 1, price: '1.00' }] })
  await phone.tap(checkout, 'pay')
  await until('the error text', () => text(checkout, 'error'))
  expect(text(checkout, 'error')).toBe('商品已下架或不存在')
  expect(phone.paymentCalls).toEqual([])
})

test('requestPayment:ok is not taken as proof of payment: the result page asks the backend', async () => {
  const phone = newPhone()
  const checkout = await fillCart(phone)
  phone.paymentActions.push('claim-ok')
  await phone.tap(checkout, 'pay')
  const { order_no } = await phone.navigatedTo('result')
  const result = await phone.open('result', { order_no }, (page) => {
    page.pollOptions = { intervalMs: 100, timeoutMs: 1000 }
  })
  expect(text(result, 'title')).toContain('支付结果确认中')
  expect(['CREATED', 'PAYING']).toContain((await order(phone, order_no)).status)
})

test('a payment whose notification never comes is still seen as paid (the backend asks WeChat)', async () => {
  const phone = newPhone()
  const checkout = await fillCart(phone)
  await httpJson('POST', sim('/sim/faults'), { global: { notify_drop: true } })
  await phone.tap(checkout, 'pay')
  const { order_no } = await phone.navigatedTo('result')
  const result = await phone.open('result', { order_no }, (page) => {
    page.pollOptions = { intervalMs: 500, timeoutMs: 20000 }
  })
  expect(text(result, 'title')).toBe('支付成功')
  const notes = await httpJson('GET', sim(`/sim/notifications?out_trade_no=${order_no}`))
  expect(JSON.stringify(notes.data)).toContain('dropped')
})

test('a refund made by the shop shows on my orders', async () => {
  const phone = newPhone()
  const checkout = await fillCart(phone)
  await phone.tap(checkout, 'pay')
  const { order_no } = await phone.navigatedTo('result')
  await phone.open('result', { order_no })

  // The shop refunds ¥5.00 of the ¥18.00 (admin API: what the console and `wxpay refund` call).
  const refund = await httpJson('POST', backend(`/admin/api/orders/${order_no}/refunds`), { amount_fen: 500, reason: '缺货 out of stock' }, {
    Authorization: `Bearer ${process.env.WXPAY_ADMIN_TOKEN}`,
    'Idempotency-Key': `mp-test-${order_no}`,
  })
  expect([201, 202]).toContain(refund.statusCode)
  await until('the refund to succeed', async () => (await order(phone, order_no)).refunded_fen === 500)

  const orders = await phone.open('orders')
  expect(text(orders, `status-${order_no}`)).toBe('部分退款（已退 ¥5.00）')
  snapshot(orders, '6-refunded', '我的订单')
})
