// Starts what the console tests drive: a real `wxpay serve` (the debug binary) in sandbox mode
// with its embedded WeChat simulator, on free ports, a fresh SQLite file and a webhook receiver
// of our own; admin tokens are made with `wxpay admin token add NAME --role ROLE`.
const { execFileSync } = require('child_process')
const http = require('http')

const { binary, cleanEnv, startServe } = require('../../support/wxpay-serve')

// A webhook receiver that fails (503) until `hooks.accept = true`.
function webhookReceiver() {
  const hooks = { accept: false, received: [] }
  const server = http.createServer((req, res) => {
    let body = ''
    req.on('data', (c) => (body += c))
    req.on('end', () => {
      hooks.received.push(body)
      res.writeHead(hooks.accept ? 200 : 503)
      res.end()
    })
  })
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, hooks })))
}

async function start({ operatorLimitFen = 100 } = {}) {
  const receiver = await webhookReceiver()
  const serve = await startServe({
    name: 'console',
    tables: [
      '[webhook]',
      `url = "http://127.0.0.1:${receiver.server.address().port}/hook"`,
      'max_attempts = 1',
      '[console]',
      `operator_refund_limit_fen = ${operatorLimitFen}`,
    ],
  })
  const token = (name, role) =>
    execFileSync(binary(), ['admin', 'token', 'add', name, '--role', role, '--config', serve.config], { env: cleanEnv() })
      .toString()
      .trim()
  const stop = async () => {
    await serve.stop()
    receiver.server.close()
  }
  return { url: serve.url, sim: serve.sim, token, stop, hooks: receiver.hooks }
}

function call(method, url, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const isJson = body !== undefined && typeof body !== 'string'
    const req = http.request(url, { method, headers: { 'content-type': isJson ? 'application/json' : 'text/xml', ...headers } }, (res) => {
      let text = ''
      res.on('data', (c) => (text += c))
      res.on('end', () => resolve({ status: res.statusCode, text }))
    })
    req.on('error', reject)
    if (body !== undefined) req.write(isJson ? JSON.stringify(body) : body)
    req.end()
  })
}

module.exports = { start, call }
