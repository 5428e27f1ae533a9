// The backend's stable error codes (`{"code", "message"}`) as texts for the shop's customers.
// `message` is for developers (English, precise); customers see these.
const TEXTS = {
  INVALID_INPUT: '输入有误，请检查后重试',
  INVALID_CODE: '登录失败，请重新打开小程序',
  UNAUTHORIZED: '请先登录',
  SESSION_EXPIRED: '登录已过期，请重新登录',
  PRODUCT_NOT_FOUND: '商品已下架或不存在',
  PRODUCT_UNAVAILABLE: '商品已下架',
  ORDER_NOT_FOUND: '订单不存在',
  ORDER_PAID: '订单已支付，无需重复支付',
  ORDER_CLOSED: '订单已关闭，请重新下单',
  ORDER_EXPIRED: '订单已超时，请重新下单',
  WECHAT_UNAVAILABLE: '微信支付繁忙，请稍后重试',
  WECHAT_ERROR: '微信支付出错，请稍后重试',
  DATABASE_UNAVAILABLE: '服务繁忙，请稍后重试',
  RATE_LIMITED: '操作太频繁，请稍后重试',
  NETWORK_ERROR: '网络不给力，请检查网络后重试',
}

const FALLBACK = '出错了，请稍后重试'

function textFor(code) {
  return TEXTS[code] || FALLBACK
}

// What a customer reads for an order status (`refunded_fen` adds the refunded amount).
const STATUS_TEXTS = {
  CREATED: '待支付',
  PAYING: '待支付',
  PAID: '已支付',
  CLOSED: '已关闭',
  PARTIALLY_REFUNDED: '部分退款',
  REFUNDED: '已退款',
}

function statusText(order) {
  const text = STATUS_TEXTS[order.status] || order.status
  if (order.refunded_fen > 0 && order.status !== 'REFUNDED') {
    return `${text}（已退 ¥${yuan(order.refunded_fen)}）`
  }
  return text
}

function yuan(fen) {
  return (fen / 100).toFixed(2)
}

module.exports = { textFor, statusText, yuan, TEXTS }
