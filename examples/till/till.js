// The till of a vending machine or an event booth (Native mode 1, 扫码支付模式一): it shows a
// product's QR code full screen and turns to "已支付 / paid" when an order of that product,
// scanned after the code was shown, is paid. It polls the till API once a second with a token
// of the `till` scope, which can read products and the state of their latest order, nothing else.
;(function () {
  const TOKEN_KEY = 'wxpay_till_token'
  const POLL_MS = 1000
  const PAID_SHOWN_MS = 8000
  const $ = (id) => document.getElementById(id)

  let token = localStorage.getItem(TOKEN_KEY) || ''
  let product = new URLSearchParams(location.hash.slice(1)).get('product') || ''
  let since = ''
  let timer = null

  function show(id) {
    for (const el of ['setup', 'waiting', 'paid']) $(el).hidden = el !== id
  }

  async function api(path) {
    const res = await fetch(path, { headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' })
    if (res.status === 401 || res.status === 403) throw Object.assign(new Error('the till token was refused'), { auth: true })
    if (res.status === 404) throw new Error(`unknown product ${product}`)
    if (!res.ok) throw new Error(`the server answered ${res.status}`)
    return res
  }

  function setup(message) {
    clearTimeout(timer)
    $('product').value = product
    $('setup-error').textContent = message || ''
    show('setup')
  }

  async function start() {
    try {
      const p = await (await api(`/till/api/products/${encodeURIComponent(product)}`)).json()
      $('product-name').textContent = p.name
      $('product-price').textContent = `¥${(p.price_fen / 100).toFixed(2)}`
      $('qr').innerHTML = await (await api(`/till/api/products/${encodeURIComponent(product)}/qr.svg`)).text()
      waitForPayment()
    } catch (e) {
      setup(e.auth ? 'The till token was refused: enter a valid one.' : e.message)
    }
  }

  function waitForPayment() {
    // Only orders scanned from now on count: an earlier payment must not open the gate again.
    since = new Date().toISOString()
    show('waiting')
    poll()
  }

  async function poll() {
    try {
      const res = await api(`/till/api/products/${encodeURIComponent(product)}/latest-order?after=${encodeURIComponent(since)}`)
      $('status').textContent = ''
      if (res.status === 200) {
        const order = await res.json()
        if (order.status === 'PAID') {
          $('paid-order').textContent = order.order_no
          show('paid')
          timer = setTimeout(waitForPayment, PAID_SHOWN_MS)
          return
        }
      }
    } catch (e) {
      if (e.auth) return setup('The till token was refused: enter a valid one.')
      $('status').textContent = `offline: ${e.message}` // keep polling: the network may come back
    }
    timer = setTimeout(poll, POLL_MS)
  }

  $('setup').addEventListener('submit', (event) => {
    event.preventDefault()
    token = $('token').value.trim()
    product = $('product').value.trim()
    localStorage.setItem(TOKEN_KEY, token)
    history.replaceState(null, '', `#product=${encodeURIComponent(product)}`)
    start()
  })

  if (token && product) start()
  else setup()
})()
