//! The pay API (api.mch.weixin.qq.com), spec §2-§9 and the §12 checklist.
//!
//! Order of checks, as WeChat does: method and body, XML, `sign_type`, merchant, **signature**,
//! appid binding, injected faults, then the endpoint's own fields and business rules.
//!
//! Error placement (documented choice; real WeChat uses both layers):
//! * `return_code=FAIL`, unsigned, free text: non-POST / empty body (`post数据为空`), bad XML
//!   (`XML格式错误`), non-UTF-8 (`NOT_UTF8`), bad signature (`签名错误`), unknown mch_id (text
//!   `商户号mch_id不存在` plus `err_code=MCHID_NOT_EXIST`: it cannot be signed without a key),
//!   malformed fields (`<field>参数格式错误`), and `time_expire时间过短,刷卡至少1分钟,其他5分钟`.
//! * `result_code=FAIL`, signed: missing fields (`LACK_PARAMS`, `缺少参数<field>`), appid not bound
//!   (`APPID_MCHID_NOT_MATCH`), `PARAM_ERROR appid和openid不匹配`, `INVALID_REQUEST 201
//!   商户订单号重复`, `ORDERPAID`, `ORDERCLOSED`, `ORDERNOTEXIST`, `REFUNDNOTEXIST`, and the
//!   closeorder 5-minute rule as `SYSTEMERROR` with the doc's text (retry later is right).

use std::sync::Arc;
use std::time::Duration as StdDuration;

use axum::body::{to_bytes, Body};
use axum::extract::State as AxState;
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use chrono::{DateTime, Duration, Utc};
use wxpay_proto::msg::closeorder::CloseOrderRequest;
use wxpay_proto::msg::orderquery::{OrderQueryRequest, OrderQueryResponse, OrderRef};
use wxpay_proto::msg::refund::RefundRequest;
use wxpay_proto::msg::refundquery::{RefundQueryRequest, RefundQueryResponse, RefundRecord, RefundRef};
use wxpay_proto::msg::shorturl::ShortUrlRequest;
use wxpay_proto::msg::unifiedorder::UnifiedOrderRequest;
use wxpay_proto::msg::{business_fail, err_code, protocol_fail, ApiRequest, Message};
use wxpay_proto::sign::{canonical_string, verify};
use wxpay_proto::types::BeijingTime;
use wxpay_proto::xml::{parse_with, to_xml, XmlError, XmlLimits};
use wxpay_proto::{Fen, FieldError, Fields, OutRefundNo, OutTradeNo, SignType, TradeState, TradeType, TransactionId};

use crate::notifier;
use crate::state::{MerchantRt, Order, OrderKey, Refund, State};
use crate::Simulator;

/// Largest body read at all; bigger ones are answered like WeChat does (`post数据为空`).
const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    UnifiedOrder,
    OrderQuery,
    CloseOrder,
    Refund,
    RefundQuery,
    ShortUrl,
}

impl Endpoint {
    pub const ALL: [Endpoint; 6] = [
        Endpoint::UnifiedOrder,
        Endpoint::OrderQuery,
        Endpoint::CloseOrder,
        Endpoint::Refund,
        Endpoint::RefundQuery,
        Endpoint::ShortUrl,
    ];
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::UnifiedOrder => "/pay/unifiedorder",
            Endpoint::OrderQuery => "/pay/orderquery",
            Endpoint::CloseOrder => "/pay/closeorder",
            Endpoint::Refund => "/secapi/pay/refund",
            Endpoint::RefundQuery => "/pay/refundquery",
            Endpoint::ShortUrl => "/tools/shorturl",
        }
    }
}

pub(crate) fn routes() -> Router<Arc<Simulator>> {
    let mut r = Router::new();
    for ep in Endpoint::ALL {
        let h = move |AxState(sim): AxState<Arc<Simulator>>, method: Method, body: Body| handle(sim, method, body, ep);
        r = r.route(ep.path(), any(h));
        // The old sandbox (仿真测试系统) prefix; its refund path has no `secapi`.
        let sandbox = format!("/sandboxnew{}", ep.path().trim_start_matches("/secapi"));
        r = r.route(&sandbox, any(h));
    }
    r.route("/sandboxnew/pay/getsignkey", any(getsignkey))
}

/// Pay-host endpoints that SDKs call but the simulator does not simulate: a documented FAIL.
pub const UNSUPPORTED: [&str; 4] =
    ["/pay/micropay", "/secapi/pay/reverse", "/pay/downloadfundflow", "/pay/batchqueryevaluation"];

/// Any path the simulator does not route on the pay host: WeChat answers XML, not an empty 404.
pub(crate) fn unknown_endpoint(path: &str) -> Response {
    let bare = path.strip_prefix("/sandboxnew").unwrap_or(path);
    let bare = if bare.starts_with("/pay/reverse") { "/secapi/pay/reverse" } else { bare };
    let msg = if UNSUPPORTED.contains(&bare) {
        format!("NOT_SUPPORTED: {path} is not simulated by wxpay-sim (模拟器不支持该接口)")
    } else {
        format!("NOT_FOUND: {path} is not a WeChat Pay v2 endpoint (接口不存在)")
    };
    xml_response(&protocol_fail(&msg))
}

/// `/sandboxnew/pay/getsignkey`: the sandbox key (仿真测试系统验签密钥). The simulator hands back
/// the merchant's own API key, so an SDK in sandbox mode keeps signing with a key it accepts.
async fn getsignkey(AxState(sim): AxState<Arc<Simulator>>, method: Method, body: Body) -> Response {
    let bytes = to_bytes(body, MAX_BODY).await.ok();
    let reply = (|| {
        if method != Method::POST {
            return protocol_fail("post数据为空");
        }
        let Some(body) = bytes.as_deref().filter(|b| !b.is_empty()) else { return protocol_fail("post数据为空") };
        let Ok(fields) = parse_with(body, XmlLimits::default()) else { return protocol_fail("XML格式错误") };
        if !root_is_xml(body) {
            return protocol_fail("XML格式错误");
        }
        let Some(mch_id) = fields.non_empty("mch_id") else { return protocol_fail("mch_id参数格式错误") };
        let Some(m) = sim.lock().merchant(mch_id).cloned() else { return protocol_fail("商户号mch_id不存在") };
        if verify(&fields, &m.merchant.key, SignType::Md5).is_err() {
            return protocol_fail("签名错误");
        }
        let mut f = Fields::new();
        f.set("return_code", "SUCCESS")
            .set("return_msg", "ok")
            .set("mch_id", m.mch_id())
            .set("sandbox_signkey", m.merchant.key.expose());
        f
    })();
    xml_response(&reply)
}

/// Is the document's root element `<xml>`? (after an optional prolog, comments and blanks)
pub(crate) fn root_is_xml(body: &[u8]) -> bool {
    let mut rest = body.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(body);
    loop {
        let trimmed = rest.iter().position(|b| !b.is_ascii_whitespace()).map_or(&rest[rest.len()..], |i| &rest[i..]);
        rest = trimmed;
        let skip_to = |end: &[u8]| rest.windows(end.len()).position(|w| w == end).map(|i| i + end.len());
        if rest.starts_with(b"<?") {
            match skip_to(b"?>") {
                Some(i) => rest = &rest[i..],
                None => return false,
            }
        } else if rest.starts_with(b"<!--") {
            match skip_to(b"-->") {
                Some(i) => rest = &rest[i..],
                None => return false,
            }
        } else {
            return rest.starts_with(b"<xml")
                && matches!(rest.get(4), Some(b'>' | b'/') | Some(b' ' | b'\t' | b'\r' | b'\n'));
        }
    }
}

/// Always HTTP 200 with `content-type: text/plain`, as observed on the real hosts.
fn xml_response(fields: &Fields) -> Response {
    ([(header::CONTENT_TYPE, "text/plain")], to_xml(fields)).into_response()
}

async fn handle(sim: Arc<Simulator>, method: Method, body: Body, ep: Endpoint) -> Response {
    let bytes = to_bytes(body, MAX_BODY).await.ok();
    let (reply, hold) = process(&sim, &method, bytes.as_deref(), ep);
    if let Some(d) = hold {
        // Timeout fault: the call was processed, only the answer is late (or never read).
        tokio::time::sleep(d).await;
    }
    xml_response(&reply)
}

/// Why a call failed, at which layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiFail {
    Protocol(String),
    Business(&'static str, String),
}

fn business(code: &'static str, des: impl Into<String>) -> ApiFail {
    ApiFail::Business(code, des.into())
}

/// Missing fields are LACK_PARAMS (result layer); malformed ones `xxx参数格式错误` (protocol).
fn field_fail(e: FieldError) -> ApiFail {
    if e.problem.contains("is required when trade_type is JSAPI") {
        return business(err_code::LACK_PARAMS, "JSAPI支付必须传openid");
    }
    if e.problem.contains("is required when trade_type is NATIVE") {
        return business(err_code::LACK_PARAMS, "NATIVE支付必须传product_id");
    }
    if e.problem.contains("is required") {
        return business(err_code::LACK_PARAMS, format!("缺少参数{}", e.field));
    }
    ApiFail::Protocol(format!("{}参数格式错误", e.field))
}

fn process(sim: &Simulator, method: &Method, body: Option<&[u8]>, ep: Endpoint) -> (Fields, Option<StdDuration>) {
    if method != Method::POST {
        return (protocol_fail("post数据为空"), None);
    }
    let Some(body) = body.filter(|b| !b.is_empty()) else {
        return (protocol_fail("post数据为空"), None);
    };
    let fields = match parse_with(body, XmlLimits::default()) {
        Ok(f) => f,
        Err(XmlError::Empty | XmlError::TooLarge { .. }) => return (protocol_fail("post数据为空"), None),
        Err(XmlError::NotUtf8 { .. }) => return (protocol_fail("NOT_UTF8"), None),
        Err(_) => return (protocol_fail("XML格式错误"), None),
    };
    if !root_is_xml(body) {
        return (protocol_fail("XML格式错误"), None);
    }
    let Ok(sign_type) = SignType::from_fields(&fields) else {
        return (protocol_fail("sign_type参数格式错误"), None);
    };
    let Some(mch_id) = fields.non_empty("mch_id") else {
        return (protocol_fail("mch_id参数格式错误"), None);
    };
    let now = sim.now();
    let mut st = sim.lock();
    let Some(m) = st.merchant(mch_id).cloned() else {
        let mut f = protocol_fail("商户号mch_id不存在");
        f.set("err_code", err_code::MCHID_NOT_EXIST);
        return (f, None);
    };
    // shorturl: the doc says to sign the raw long_url and URL-encode it for transport, so a
    // URL-encoded long_url is verified (and used) decoded; one signed as sent is accepted too.
    let fields = match verify(&fields, &m.merchant.key, sign_type) {
        Ok(()) => decoded_long_url(&fields, ep).unwrap_or(fields),
        Err(_) => match decoded_long_url(&fields, ep) {
            Some(decoded) if verify(&decoded, &m.merchant.key, sign_type).is_ok() => decoded,
            _ => return (protocol_fail("签名错误"), None),
        },
    };
    // Success and business-failure answers carry return_msg OK, as the official examples do.
    let seal = |f: Fields| m.merchant.seal_reply(f.with("return_msg", "OK"), sign_type);
    match fields.non_empty("appid") {
        None => return (seal(business_fail(err_code::LACK_PARAMS, "缺少参数appid")), None),
        Some(a) if a != m.appid() => {
            return (seal(business_fail(err_code::APPID_MCHID_NOT_MATCH, "appid和mch_id不匹配")), None)
        }
        Some(_) => {}
    }
    match fields.non_empty("nonce_str") {
        None => return (seal(business_fail(err_code::LACK_PARAMS, "缺少参数nonce_str")), None),
        Some(n) if n.chars().count() > 32 => return (protocol_fail("nonce_str参数格式错误"), None),
        Some(_) => {}
    }

    let faults = st.faults.for_order(fields.non_empty("out_trade_no")).clone();
    let mut hold = None;
    if faults.applies_to_endpoint(ep.path()) {
        if faults.api_error_rate > 0.0 && st.roll() < faults.api_error_rate {
            return (seal(business_fail(err_code::SYSTEMERROR, "系统超时")), None);
        }
        if faults.api_timeout_rate > 0.0 && st.roll() < faults.api_timeout_rate {
            hold = Some(StdDuration::from_secs_f64(faults.api_timeout_secs.clamp(0.0, 3600.0)));
        }
    }

    let ctx = Ctx { sim, m: &m, fields: &fields, sign_type, now };
    let result = match ep {
        Endpoint::UnifiedOrder => unifiedorder(&mut st, &ctx),
        Endpoint::OrderQuery => orderquery(&mut st, &ctx),
        Endpoint::CloseOrder => closeorder(&mut st, &ctx),
        Endpoint::Refund => refund_limited(&mut st, &ctx),
        Endpoint::RefundQuery => refundquery(&mut st, &ctx),
        Endpoint::ShortUrl => shorturl(&mut st, &ctx),
    };
    let reply = match result {
        Ok(f) => seal(f),
        Err(ApiFail::Protocol(msg)) => protocol_fail(&msg),
        Err(ApiFail::Business(code, des)) => seal(business_fail(code, &des)),
    };
    (reply, hold)
}

/// A copy of the request with `long_url` URL-decoded, when it is a whole URL-encoded link
/// (`weixin%3A%2F%2F...`). A raw link (whose own query may hold `%XX` escapes) is left alone.
fn decoded_long_url(fields: &Fields, ep: Endpoint) -> Option<Fields> {
    if ep != Endpoint::ShortUrl {
        return None;
    }
    let raw = fields.get("long_url")?;
    if raw.starts_with("weixin://") || !raw.contains('%') {
        return None;
    }
    let decoded: String = url::form_urlencoded::parse(format!("u={}", raw.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())?;
    if !decoded.starts_with("weixin://") {
        return None;
    }
    let mut out = fields.clone();
    out.set("long_url", decoded);
    Some(out)
}

struct Ctx<'a> {
    sim: &'a Simulator,
    m: &'a MerchantRt,
    fields: &'a Fields,
    sign_type: SignType,
    now: DateTime<Utc>,
}

impl Ctx<'_> {
    fn key(&self, out_trade_no: &str) -> OrderKey {
        (self.m.mch_id().to_owned(), out_trade_no.to_owned())
    }

    /// The order a transaction_id / out_trade_no names, if it belongs to this merchant.
    fn find(&self, st: &State, r: &OrderRef) -> Option<OrderKey> {
        let key = match r {
            OrderRef::TransactionId(t) => st.transactions.get(t.as_str())?.clone(),
            OrderRef::OutTradeNo(o) => self.key(o.as_str()),
        };
        (key.0 == self.m.mch_id() && st.orders.contains_key(&key)).then_some(key)
    }
}

/// The business fields a re-entry must repeat exactly (everything signed but nonce and sign),
/// plus the signing algorithm: a re-entry with another `sign_type` is a changed request (the
/// order's paySign and notification use one algorithm). Kept as the SHA-256 of that text: the
/// order only ever compares it, and the text is a few hundred bytes per order.
fn fingerprint(fields: &Fields, sign_type: SignType) -> [u8; 32] {
    use sha2::Digest;
    let business = canonical_string(fields.iter().filter(|(k, _)| !matches!(*k, "nonce_str" | "sign" | "sign_type")));
    sha2::Sha256::digest(format!("{business}#{}", sign_type.as_str())).into()
}

/// product_id as WeChat documents it: String(32), "商户定义的商品id 或者订单号", no character
/// set given. The simulator accepts 1-32 characters of any kind but control characters.
pub(crate) fn product_id_ok(p: &str) -> bool {
    !p.is_empty() && p.chars().count() <= 32 && !p.chars().any(char::is_control)
}

/// Placeholder for a valid product_id that the protocol crate's stricter ASCII type would refuse.
const PRODUCT_ID_PLACEHOLDER: &str = "product";

fn unifiedorder(st: &mut State, c: &Ctx<'_>) -> Result<Fields, ApiFail> {
    // The protocol crate's ProductId is printable ASCII (the server's catalogue rule); WeChat
    // takes any String(32). Check it here and parse the rest with a placeholder.
    let product_id = c.fields.non_empty("product_id").map(str::to_owned);
    let mut parsed = c.fields.clone();
    if let Some(p) = &product_id {
        if !product_id_ok(p) {
            return Err(ApiFail::Protocol("product_id参数格式错误".into()));
        }
        parsed.set("product_id", PRODUCT_ID_PLACEHOLDER);
    }
    let req = UnifiedOrderRequest::from_fields(&parsed).map_err(field_fail)?;
    if req.spbill_create_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(ApiFail::Protocol("spbill_create_ip参数格式错误".into()));
    }
    if let (Some(start), Some(end)) = (req.time_start, req.time_expire) {
        if start.to_utc() > end.to_utc() {
            return Err(ApiFail::Protocol("time_start参数格式错误".into()));
        }
    }
    if req.trade_type == TradeType::Micropay {
        return Err(ApiFail::Protocol("trade_type参数格式错误".into()));
    }
    if req.fee_type.as_deref().is_some_and(|f| f != "CNY") {
        return Err(ApiFail::Protocol("fee_type参数格式错误".into()));
    }
    if let Some(te) = req.time_expire {
        if te.to_utc() < c.now + Duration::minutes(5) {
            return Err(ApiFail::Protocol("time_expire时间过短,刷卡至少1分钟,其他5分钟".into()));
        }
    }
    if let Some(openid) = &req.openid {
        match st.openids.get(openid.as_str()) {
            Some((_, appid)) if appid == c.m.appid() => {}
            _ => return Err(business(err_code::PARAM_ERROR, "appid和openid不匹配")),
        }
    }
    let fp = fingerprint(c.fields, c.sign_type);
    let key = c.key(req.out_trade_no.as_str());
    let mut reply = Fields::new();
    reply.set("trade_type", req.trade_type.as_str());
    reply.set_opt("device_info", req.device_info.clone());

    if let Some(existing) = st.orders.get(&key) {
        match existing.state {
            TradeState::Notpay => {}
            TradeState::Closed => return Err(business(err_code::ORDERCLOSED, "该订单已关闭")),
            _ => return Err(business(err_code::ORDERPAID, "该订单已支付")),
        }
        if existing.fingerprint != fp {
            return Err(business(err_code::INVALID_REQUEST, "201 商户订单号重复"));
        }
        if existing.prepay_live(c.now) {
            reply.set("prepay_id", existing.prepay_id.as_str());
            reply.set_opt("code_url", existing.code_url.clone());
            return Ok(reply);
        }
        // Same parameters after 2 hours: a new prepay for the same order.
        let prepay_id = st.new_prepay_id(c.now);
        let code_url = (req.trade_type == TradeType::Native).then(|| st.new_code_url());
        st.prepays.insert(prepay_id.clone(), key.clone());
        if let Some(u) = &code_url {
            st.code_urls.insert(u.clone(), key.clone());
        }
        if let Some(o) = st.orders.get_mut(&key) {
            o.prepay_id = prepay_id.clone();
            o.prepay_at = c.now;
            o.code_url = code_url.clone();
        }
        reply.set("prepay_id", prepay_id);
        reply.set_opt("code_url", code_url);
        return Ok(reply);
    }

    let prepay_id = st.new_prepay_id(c.now);
    let code_url = (req.trade_type == TradeType::Native).then(|| st.new_code_url());
    let order = Order {
        mch_id: c.m.mch_id().to_owned(),
        appid: c.m.appid().to_owned(),
        out_trade_no: req.out_trade_no.as_str().to_owned(),
        body: req.body.clone(),
        total_fee: req.total_fee.get(),
        trade_type: req.trade_type,
        openid: req.openid.as_ref().map(|o| o.as_str().to_owned()),
        product_id,
        attach: req.attach.clone(),
        device_info: req.device_info.clone(),
        notify_url: req.notify_url.clone(),
        sign_type: c.sign_type,
        fingerprint: fp,
        created_at: c.now,
        time_expire: req.time_expire.map(BeijingTime::to_utc),
        prepay_id: prepay_id.clone(),
        prepay_at: c.now,
        code_url: code_url.clone(),
        state: TradeState::Notpay,
        transaction_id: None,
        payer: None,
        payer_openid: None,
        time_end: None,
        closed_at: None,
        refunds: Vec::new(),
    };
    st.prepays.insert(prepay_id.clone(), key.clone());
    if let Some(u) = &code_url {
        st.code_urls.insert(u.clone(), key.clone());
    }
    st.orders.insert(key, Box::new(order));
    reply.set("prepay_id", prepay_id);
    reply.set_opt("code_url", code_url);
    Ok(reply)
}

fn trade_state_desc(s: TradeState) -> &'static str {
    match s {
        TradeState::Success => "支付成功",
        TradeState::Refund => "订单发生过退款，退款详情请查询退款单",
        TradeState::Notpay => "订单未支付",
        TradeState::Closed => "订单已关闭",
        _ => "",
    }
}

fn orderquery(st: &mut State, c: &Ctx<'_>) -> Result<Fields, ApiFail> {
    let req = OrderQueryRequest::from_fields(c.fields).map_err(field_fail)?;
    let key = c.find(st, &req.order).ok_or_else(|| business(err_code::ORDERNOTEXIST, "order not exist"))?;
    let o = st.orders.get(&key).ok_or_else(|| business(err_code::ORDERNOTEXIST, "order not exist"))?;
    let out_trade_no = OutTradeNo::parse(o.out_trade_no.as_str()).map_err(field_fail)?;
    let mut r = OrderQueryResponse::new(o.state, out_trade_no);
    r.trade_state_desc = Some(trade_state_desc(o.state).to_owned());
    r.attach = o.attach.clone();
    r.device_info = o.device_info.clone();
    if o.state.is_paid() {
        r.transaction_id = o.transaction_id.as_deref().and_then(|t| TransactionId::parse(t).ok());
        r.total_fee = Some(Fen::new(o.total_fee));
        r.cash_fee = Some(Fen::new(o.total_fee));
        r.openid = o.payer_openid.as_deref().and_then(|p| wxpay_proto::Openid::parse(p).ok());
        r.trade_type = Some(o.trade_type);
        r.bank_type = Some("OTHERS".into());
        r.fee_type = Some("CNY".into());
        r.time_end = o.time_end.map(BeijingTime::from_utc);
        r.is_subscribe = Some("N".into());
    }
    Ok(r.to_fields())
}

fn closeorder(st: &mut State, c: &Ctx<'_>) -> Result<Fields, ApiFail> {
    let req = CloseOrderRequest::from_fields(c.fields).map_err(field_fail)?;
    let key = c.key(req.out_trade_no.as_str());
    let Some(order) = st.orders.get(&key) else {
        return Err(business(err_code::ORDERNOTEXIST, "订单不存在"));
    };
    // Fault: the user's payment lands just before the close is processed (also when the close
    // comes at or after the order's expiry: the payment then raced the last second).
    if st.faults.for_order(Some(&order.out_trade_no)).pay_on_close && order.state == TradeState::Notpay {
        if let Some(user) = st.payer_of(order) {
            if st.pay_just_before_close(&key, &user, c.now).is_ok() {
                notifier::schedule_pay(st, &key, c.now);
            }
        }
    }
    let Some(order) = st.orders.get_mut(&key) else {
        return Err(business(err_code::ORDERNOTEXIST, "订单不存在"));
    };
    match order.state {
        TradeState::Notpay => {}
        TradeState::Closed => return Err(business(err_code::ORDERCLOSED, "订单已关闭，无法重复关闭")),
        _ => return Err(business(err_code::ORDERPAID, "订单已支付，不能发起关单")),
    }
    let min_age = c.sim.config.closeorder_min_age_secs;
    if min_age > 0 && c.now < order.created_at + Duration::seconds(min_age as i64) {
        return Err(business(err_code::SYSTEMERROR, "订单生成后不能马上调用关单接口，最短调用时间间隔为5分钟"));
    }
    order.state = TradeState::Closed;
    order.closed_at = Some(c.now);
    Ok(Fields::new().with("result_msg", "OK"))
}

const REFUND_MISMATCH: &str = "订单金额或退款金额与之前请求不一致，请核实后再试";

fn refund_reply(o: &Order, r: &Refund) -> Fields {
    let mut f = Fields::new();
    f.set("transaction_id", o.transaction_id.clone().unwrap_or_default())
        .set("out_trade_no", o.out_trade_no.as_str())
        .set("out_refund_no", r.out_refund_no.as_str())
        .set("refund_id", r.refund_id.as_str())
        .set("refund_fee", r.refund_fee.to_string())
        .set("settlement_refund_fee", r.refund_fee.to_string())
        .set("total_fee", o.total_fee.to_string())
        .set("settlement_total_fee", o.total_fee.to_string())
        .set("fee_type", "CNY")
        .set("cash_fee", o.total_fee.to_string())
        .set("cash_refund_fee", r.refund_fee.to_string());
    f
}

/// Calls within the last (simulated) second, after dropping older ones.
fn recent(q: &mut std::collections::VecDeque<DateTime<Utc>>, now: DateTime<Utc>) -> usize {
    while q.front().is_some_and(|t| *t <= now - Duration::seconds(1)) {
        q.pop_front();
    }
    q.len()
}

/// The per-merchant refund rates of spec §7.1 around [`refund`]: 150 calls a second
/// (`FREQUENCY_LIMITED`) and 6 failed calls a second (`INVALID_REQ_TOO_MUCH`), both configurable.
fn refund_limited(st: &mut State, c: &Ctx<'_>) -> Result<Fields, ApiFail> {
    let cfg = &c.sim.config;
    let mch = c.m.mch_id().to_owned();
    if cfg.refund_error_qps_limit > 0 {
        let errors = st.refund_errors.entry(mch.clone()).or_default();
        if recent(errors, c.now) >= cfg.refund_error_qps_limit as usize {
            return Err(business(err_code::INVALID_REQ_TOO_MUCH, "无效请求过多，请稍后再试"));
        }
    }
    if cfg.refund_qps_limit > 0 {
        let calls = st.refund_calls.entry(mch.clone()).or_default();
        if recent(calls, c.now) >= cfg.refund_qps_limit as usize {
            return Err(business(err_code::FREQUENCY_LIMITED, "频率限制，请降低请求频率后重试"));
        }
        calls.push_back(c.now);
    }
    let result = refund(st, c);
    if result.is_err() && cfg.refund_error_qps_limit > 0 {
        st.refund_errors.entry(mch).or_default().push_back(c.now);
    }
    result
}

/// Refunds are possible for a year after payment (spec §7.1).
const REFUND_WINDOW_DAYS: i64 = 365;

/// A refund `err_code` a fault asks for, with WeChat's text for it (spec §7.1's error table);
/// an unknown code becomes `ERROR`.
fn refund_error(code: &str) -> (&'static str, &'static str) {
    match code {
        "NOTENOUGH" => (err_code::NOTENOUGH, "基本账户余额不足，请充值后重新发起"),
        "SYSTEMERROR" => (err_code::SYSTEMERROR, "系统超时"),
        "BIZERR_NEED_RETRY" => (err_code::BIZERR_NEED_RETRY, "并发情况下，业务被拒绝，商户重试即可解决"),
        "TRADE_OVERDUE" => (err_code::TRADE_OVERDUE, "订单已经超过可退款的最大期限(支付后一年内可退款)"),
        "USER_ACCOUNT_ABNORMAL" => ("USER_ACCOUNT_ABNORMAL", "用户帐号注销"),
        "FREQUENCY_LIMITED" => (err_code::FREQUENCY_LIMITED, "单笔订单请求频率过高,请于1分钟后重试."),
        "ORDERNOTEXIST" => (err_code::ORDERNOTEXIST, "订单不存在"),
        _ => (err_code::ERROR, "退款失败"),
    }
}

fn refund(st: &mut State, c: &Ctx<'_>) -> Result<Fields, ApiFail> {
    let req = RefundRequest::from_fields(c.fields).map_err(field_fail)?;
    let key = c.find(st, &req.order).ok_or_else(|| business(err_code::ORDERNOTEXIST, "订单不存在"))?;
    let faults = st.faults.for_order(Some(key.1.as_str())).clone();
    if let Some(code) = faults.refund_err_code.as_deref().filter(|c| !c.is_empty()) {
        let (code, text) = refund_error(code);
        return Err(business(code, text));
    }
    let final_status = match faults.refund_result.as_deref() {
        None | Some("") | Some("SUCCESS") => wxpay_proto::msg::refund::RefundStatus::Success,
        Some(other) => {
            wxpay_proto::msg::refund::RefundStatus::parse_field("refund_result", other).map_err(field_fail)?
        }
    };
    let rkey = (c.m.mch_id().to_owned(), req.out_refund_no.as_str().to_owned());
    if let Some(other) = st.out_refund_nos.get(&rkey) {
        if *other != key {
            return Err(business(err_code::INVALID_REQUEST, "退款单号已用于其他订单"));
        }
        let o = st.orders.get(&key).ok_or_else(|| business(err_code::ORDERNOTEXIST, "订单不存在"))?;
        let r = o.refunds.iter().find(|r| r.out_refund_no == rkey.1);
        return match r {
            // Idempotent retry of the same refund.
            Some(r) if r.refund_fee == req.refund_fee.get() && o.total_fee == req.total_fee.get() => {
                Ok(refund_reply(o, r))
            }
            _ => Err(business(err_code::INVALID_REQUEST, REFUND_MISMATCH)),
        };
    }
    let o = st.orders.get(&key).ok_or_else(|| business(err_code::ORDERNOTEXIST, "订单不存在"))?;
    if !o.state.is_paid() {
        return Err(business(err_code::ERROR, "订单状态错误，不能退款"));
    }
    if o.total_fee != req.total_fee.get() {
        return Err(business(err_code::INVALID_REQUEST, REFUND_MISMATCH));
    }
    if o.time_end.is_some_and(|paid| c.now >= paid + Duration::days(REFUND_WINDOW_DAYS)) {
        return Err(business(err_code::TRADE_OVERDUE, "订单已经超过可退款的最大期限(支付后一年内可退款)"));
    }
    let min_gap = c.sim.config.refund_min_interval_secs;
    if min_gap > 0 && o.refunds.iter().any(|r| c.now < r.created_at + Duration::seconds(min_gap as i64)) {
        return Err(business(err_code::FREQUENCY_LIMITED, "单笔订单请求频率过高,请于1分钟后重试."));
    }
    if o.refunds.len() >= 50 {
        return Err(business(err_code::ERROR, "退款次数超过限制(50次)"));
    }
    if o.refunded_fen() + req.refund_fee.get() > o.total_fee {
        return Err(business(err_code::INVALID_REQUEST, "累计退款金额大于支付金额"));
    }
    let refund_id = st.new_refund_id(c.now);
    let r = Refund {
        out_refund_no: rkey.1.clone(),
        refund_id: refund_id.clone(),
        refund_fee: req.refund_fee.get(),
        created_at: c.now,
        settle_at: c.now + Duration::seconds(c.sim.config.refund_settle_secs as i64),
        notify_url: req.notify_url.clone(),
        final_status,
    };
    st.out_refund_nos.insert(rkey.clone(), key.clone());
    st.refund_ids.insert(refund_id, key.clone());
    let reply = {
        let o = st.orders.get_mut(&key).ok_or_else(|| business(err_code::ORDERNOTEXIST, "订单不存在"))?;
        o.state = TradeState::Refund;
        o.refunds.push(r.clone());
        refund_reply(o, &r)
    };
    notifier::schedule_refund(st, &key, &rkey.1);
    Ok(reply)
}

fn refundquery(st: &mut State, c: &Ctx<'_>) -> Result<Fields, ApiFail> {
    let req = RefundQueryRequest::from_fields(c.fields).map_err(field_fail)?;
    let not_exist = || business(err_code::REFUNDNOTEXIST, "not exist");
    let (key, only): (OrderKey, Option<String>) = match &req.refund {
        RefundRef::RefundId(id) => (st.refund_ids.get(id).cloned().ok_or_else(not_exist)?, Some(id.clone())),
        RefundRef::OutRefundNo(n) => {
            let k = st.out_refund_nos.get(&(c.m.mch_id().to_owned(), n.as_str().to_owned())).cloned();
            let k = k.ok_or_else(not_exist)?;
            let id = st
                .orders
                .get(&k)
                .and_then(|o| o.refunds.iter().find(|r| r.out_refund_no == n.as_str()))
                .map(|r| r.refund_id.clone());
            (k, id)
        }
        RefundRef::TransactionId(t) => (c.find(st, &OrderRef::TransactionId(t.clone())).ok_or_else(not_exist)?, None),
        RefundRef::OutTradeNo(o) => (c.find(st, &OrderRef::OutTradeNo(o.clone())).ok_or_else(not_exist)?, None),
    };
    if key.0 != c.m.mch_id() {
        return Err(not_exist());
    }
    let o = st.orders.get(&key).ok_or_else(not_exist)?;
    let all: Vec<&Refund> = o.refunds.iter().filter(|r| only.as_ref().is_none_or(|id| &r.refund_id == id)).collect();
    if all.is_empty() {
        return Err(not_exist());
    }
    let offset = req.offset.unwrap_or(0) as usize;
    if offset >= all.len() {
        return Err(business(err_code::PARAM_ERROR, "offset超出范围"));
    }
    let mut refunds = Vec::new();
    for r in all.iter().skip(offset).take(10) {
        let status = r.status(c.now);
        refunds.push(RefundRecord {
            out_refund_no: OutRefundNo::parse(r.out_refund_no.as_str()).map_err(field_fail)?,
            refund_id: r.refund_id.clone(),
            refund_channel: Some("ORIGINAL".into()),
            refund_fee: Fen::new(r.refund_fee),
            refund_status: status,
            refund_account: Some("REFUND_SOURCE_UNSETTLED_FUNDS".into()),
            refund_recv_accout: Some("支付用户零钱".into()),
            refund_success_time: (status == wxpay_proto::msg::refund::RefundStatus::Success).then(|| r.success_time()),
        });
    }
    let resp = RefundQueryResponse {
        transaction_id: TransactionId::parse(o.transaction_id.clone().unwrap_or_default()).map_err(field_fail)?,
        out_trade_no: OutTradeNo::parse(o.out_trade_no.as_str()).map_err(field_fail)?,
        total_fee: Fen::new(o.total_fee),
        cash_fee: Some(Fen::new(o.total_fee)),
        total_refund_count: Some(all.len() as u32),
        refunds,
    };
    let mut f = resp.to_fields();
    f.set("refund_fee", all.iter().map(|r| r.refund_fee).sum::<u64>().to_string());
    f.set("settlement_total_fee", o.total_fee.to_string());
    f.set("fee_type", "CNY");
    Ok(f)
}

fn shorturl(st: &mut State, c: &Ctx<'_>) -> Result<Fields, ApiFail> {
    // Already URL-decoded by `process` when it was sent encoded; a raw link is used as sent (its
    // own query may hold %XX escapes, e.g. an encoded product_id).
    let Some(long_url) = c.fields.non_empty("long_url").map(str::to_owned) else {
        return Err(business(err_code::LACK_PARAMS, "缺少参数long_url"));
    };
    let req = ShortUrlRequest { long_url };
    req.validate().map_err(field_fail)?;
    let short = match st.long_to_short.get(&req.long_url) {
        Some(s) => s.clone(),
        None => {
            let s = format!("weixin://wxpay/s/{}", st.random_alnum(7));
            st.long_to_short.insert(req.long_url.clone(), s.clone());
            st.short_urls.insert(s.clone(), req.long_url.clone());
            s
        }
    };
    Ok(Fields::new().with("short_url", short))
}
