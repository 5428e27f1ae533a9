// Starts what the console tests drive: a real `wxpay serve` (the debug binary) in sandbox mode
// with its embedded WeChat simulator, on free ports, a fresh SQLite file and a webhook receiver
// of our own; admin tokens are made with `wxpay admin token add NAME --role ROLE`.
const { spawn, execFileSync } = require('child_process')
const fs = require('fs')
const http = require('http')
const os = require('os')
const path = require('path')

const BANNER_BACKEND = 'wxpay merchant backend listening on '
const BANNER_SIM = 'sandbox mode: WeChat simulator on '

function binary() {
  const bin = process.env.WXPAY_BIN || path.resolve(__dirname, '../../../target/debug/wxpay')
  if (!fs.existsSync(bin)) {
    throw new Error(`no wxpay binary at ${bin}: run \`cargo build\` at the repository root, or set WXPAY_BIN`)
  }
  return bin
}

function cleanEnv() {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('WXPAY_')))
}

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
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wxpay-console-'))
  const config = path.join(dir, 'wxpay.toml')
  fs.writeFileSync(
    config,
    [
      '[server]',
      'listen = "127.0.0.1:0"',
      '[database]',
      `url = "sqlite://${path.join(dir, 'wxpay.db')}"`,
      '[simulator]',
      'enabled = true',
      'listen = "127.0.0.1:0"',
      '[webhook]',
      `url = "http://127.0.0.1:${receiver.server.address().port}/hook"`,
      'max_attempts = 1',
      '[console]',
      `operator_refund_limit_fen = ${operatorLimitFen}`,
      '',
    ].join('\n'),
  )
  const child = spawn(binary(), ['serve', '--config', config], {
    env: { ...cleanEnv(), RUST_LOG: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  const started = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`wxpay serve did not start in 60 s:\n${out}`)), 60000)
    const seen = {}
    const onData = (chunk) => {
      out += chunk
      for (const line of out.split('\n')) {
        if (line.startsWith(BANNER_BACKEND)) seen.url = line.slice(BANNER_BACKEND.length).trim()
        if (line.startsWith(BANNER_SIM)) seen.sim = line.slice(BANNER_SIM.length).split(' ')[0].trim()
      }
      if (seen.url && seen.sim) {
        clearTimeout(timer)
        resolve(seen)
      }
    }
    child.stdout.on('data', onData)
    child.stderr.on('data', onData)
    child.on('exit', (code) => reject(new Error(`wxpay serve exited with ${code}:\n${out}`)))
  })
  const token = (name, role) =>
    execFileSync(binary(), ['admin', 'token', 'add', name, '--role', role, '--config', config], { env: cleanEnv() })
      .toString()
      .trim()
  const stop = async () => {
    child.kill('SIGTERM')
    await new Promise((resolve) => (child.exitCode !== null ? resolve() : child.on('exit', resolve)))
    receiver.server.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
  return { url: started.url, sim: started.sim, token, stop, hooks: receiver.hooks }
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
