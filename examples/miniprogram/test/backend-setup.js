// Starts the backend the pages talk to: a real `wxpay serve` in sandbox mode (its embedded WeChat
// simulator included), on free ports and a fresh SQLite file (tests/support/wxpay-serve.js). Set
// WXPAY_URL (and WXPAY_SIM_URL, WXPAY_ADMIN_TOKEN) to test against one you started yourself instead.
const { binary, startServe } = require('../../../tests/support/wxpay-serve')

const ADMIN_TOKEN = 'miniprogram-test-admin-token'

module.exports = async function setup() {
  if (process.env.WXPAY_URL) {
    process.env.WXPAY_SIM_URL = process.env.WXPAY_SIM_URL || 'http://127.0.0.1:8090'
    return
  }
  const serve = await startServe({ name: 'miniprogram', server: [`admin_token = "${ADMIN_TOKEN}"`] })
  process.env.WXPAY_URL = serve.url
  process.env.WXPAY_SIM_URL = serve.sim
  process.env.WXPAY_ADMIN_TOKEN = ADMIN_TOKEN
  process.env.WXPAY_CONFIG = serve.config
  process.env.WXPAY_BIN = binary()
  globalThis.__WXPAY__ = serve
}
