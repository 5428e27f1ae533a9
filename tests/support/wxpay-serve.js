// Starts a real `wxpay serve` for the repository's JavaScript suites (the sample mini-program's
// and the merchant console's): the debug binary (or WXPAY_BIN) in sandbox mode with its embedded
// WeChat simulator, on free ports and a fresh SQLite file, configured only by the file it writes
// (no WXPAY_* of the caller's environment). Plain Node, no packages.
const { spawn } = require('child_process')
const fs = require('fs')
const os = require('os')
const path = require('path')

const BANNER_BACKEND = 'wxpay merchant backend listening on '
const BANNER_SIM = 'sandbox mode: WeChat simulator on '

function binary() {
  const bin = process.env.WXPAY_BIN || path.resolve(__dirname, '../../target/debug/wxpay')
  if (!fs.existsSync(bin)) {
    throw new Error(`no wxpay binary at ${bin}: run \`cargo build\` at the repository root, or set WXPAY_BIN`)
  }
  return bin
}

function cleanEnv() {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('WXPAY_')))
}

// `server`: more keys of the [server] table; `tables`: more lines after the file's own tables.
// Resolves once both the backend and its simulator listen.
async function startServe({ name, server = [], tables = [] }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `wxpay-${name}-`))
  const config = path.join(dir, 'wxpay.toml')
  const lines = ['[server]', 'listen = "127.0.0.1:0"', ...server, '[database]', `url = "sqlite://${path.join(dir, 'wxpay.db')}"`]
  lines.push('[simulator]', 'enabled = true', 'listen = "127.0.0.1:0"', ...tables, '')
  fs.writeFileSync(config, lines.join('\n'))
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
  // SIGTERM, then SIGKILL if it has not exited within 10 s; removes its files.
  const stop = async () => {
    child.kill('SIGTERM')
    await new Promise((resolve) => {
      if (child.exitCode !== null) return resolve()
      const timer = setTimeout(() => { child.kill('SIGKILL'); resolve() }, 10000)
      child.on('exit', () => { clearTimeout(timer); resolve() })
    })
    fs.rmSync(dir, { recursive: true, force: true })
  }
  return { child, dir, config, url: started.url, sim: started.sim, stop }
}

module.exports = { binary, cleanEnv, startServe }
