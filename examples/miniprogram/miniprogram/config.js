// Where the wxpay backend runs. In WeChat DevTools, tick "不校验合法域名" (do not check domains)
// to reach a backend on your laptop; a published mini-program needs an HTTPS domain that is
// listed under 开发管理 → 服务器域名 → request合法域名.
module.exports = {
  baseUrl: 'http://127.0.0.1:8080',
}
