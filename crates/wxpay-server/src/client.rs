//! A client of this server's own HTTP API: the mini-program API (`/api/...`) and the admin API
//! (`/admin/api/...`), as `wxpay demo`, `wxpay bench` and the tests drive it.
//!
//! One method per endpoint, one HTTP request per call (the bench times each call), each returning
//! the status and the body ([`Reply`]) whatever the status: callers decide what is an error. The
//! caller passes the [`reqwest::Client`] (share one for connection reuse and its timeouts).

use serde_json::{json, Value};

/// What one call answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    /// The body as JSON; a body that is not JSON is `Value::String` of its text (the product link
    /// is plain text), an empty body is `Value::Null`.
    pub body: Value,
}

impl Reply {
    /// A 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `(status, body)` pair, for callers that match on both.
    pub fn into_pair(self) -> (u16, Value) {
        (self.status, self.body)
    }
}

/// The merchant API of one server instance.
#[derive(Debug, Clone)]
pub struct MerchantApi {
    http: reqwest::Client,
    base: String,
    admin_token: Option<String>,
}

impl MerchantApi {
    /// `base`: the instance's base URL (e.g. `http://127.0.0.1:8080`, no trailing slash);
    /// `admin_token`: the bearer token of the admin API, if the caller uses it.
    pub fn new(http: reqwest::Client, base: impl Into<String>, admin_token: Option<String>) -> MerchantApi {
        MerchantApi { http, base: base.into().trim_end_matches('/').to_owned(), admin_token }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The full URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path` with an optional bearer token (for endpoints without a method of their own).
    pub async fn get(&self, path: &str, token: Option<&str>) -> Result<Reply, reqwest::Error> {
        let req = self.http.get(self.url(path));
        send(with_token(req, token)).await
    }

    /// `POST path` with a JSON body and an optional bearer token.
    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Result<Reply, reqwest::Error> {
        let req = self.http.post(self.url(path)).json(body);
        send(with_token(req, token)).await
    }

    // The mini-program API (bearer: the session token from `login`).

    /// `POST /api/mp/login` with the `wx.login` code: `{"token", ...}`.
    pub async fn login(&self, code: &str) -> Result<Reply, reqwest::Error> {
        self.post("/api/mp/login", None, &json!({ "code": code })).await
    }

    /// `GET /api/products`.
    pub async fn products(&self) -> Result<Reply, reqwest::Error> {
        self.get("/api/products", None).await
    }

    /// `POST /api/orders` of `items` (product id, quantity): 201 with the order.
    pub async fn create_order(&self, token: &str, items: &[(&str, u32)]) -> Result<Reply, reqwest::Error> {
        let items: Vec<Value> = items.iter().map(|(p, q)| json!({ "product_id": p, "quantity": q })).collect();
        self.post("/api/orders", Some(token), &json!({ "items": items })).await
    }

    /// `GET /api/orders`: the user's orders.
    pub async fn orders(&self, token: &str) -> Result<Reply, reqwest::Error> {
        self.get("/api/orders", Some(token)).await
    }

    /// `GET /api/orders/{order_no}`.
    pub async fn order(&self, token: &str, order_no: &str) -> Result<Reply, reqwest::Error> {
        self.get(&format!("/api/orders/{order_no}"), Some(token)).await
    }

    /// `POST /api/orders/{order_no}/pay`: the `wx.requestPayment` parameters.
    pub async fn pay(&self, token: &str, order_no: &str) -> Result<Reply, reqwest::Error> {
        self.post(&format!("/api/orders/{order_no}/pay"), Some(token), &json!({})).await
    }

    /// `POST /api/orders/{order_no}/cancel`.
    pub async fn cancel(&self, token: &str, order_no: &str) -> Result<Reply, reqwest::Error> {
        self.post(&format!("/api/orders/{order_no}/cancel"), Some(token), &json!({})).await
    }

    // The admin API (bearer: the admin token given to `new`).

    /// `GET /admin/api/orders?{query}` (`query` such as `limit=500&offset=0`, or empty).
    pub async fn admin_orders(&self, query: &str) -> Result<Reply, reqwest::Error> {
        let path = if query.is_empty() { "/admin/api/orders".to_owned() } else { format!("/admin/api/orders?{query}") };
        self.get(&path, self.admin_token.as_deref()).await
    }

    /// `GET /admin/api/orders/{order_no}`: the order, its events, notifications and outbox.
    pub async fn admin_order(&self, order_no: &str) -> Result<Reply, reqwest::Error> {
        self.get(&format!("/admin/api/orders/{order_no}"), self.admin_token.as_deref()).await
    }

    /// `POST /admin/api/orders/{order_no}/ship` (发货).
    pub async fn ship(&self, order_no: &str) -> Result<Reply, reqwest::Error> {
        self.post(&format!("/admin/api/orders/{order_no}/ship"), self.admin_token.as_deref(), &json!({})).await
    }

    /// `POST /admin/api/orders/{order_no}/refunds` (申请退款) with `Idempotency-Key: {key}` and
    /// `body` (`{amount_fen, reason, out_refund_no?}`).
    pub async fn refund(&self, order_no: &str, key: &str, body: &Value) -> Result<Reply, reqwest::Error> {
        let req = self.http.post(self.url(&format!("/admin/api/orders/{order_no}/refunds")));
        send(with_token(req, self.admin_token.as_deref()).header("idempotency-key", key).json(body)).await
    }

    /// `GET /admin/api/products/{product_id}/link`: the signed Native mode-1 link, as text.
    pub async fn product_link(&self, product_id: &str) -> Result<Reply, reqwest::Error> {
        self.get(&format!("/admin/api/products/{product_id}/link"), self.admin_token.as_deref()).await
    }
}

fn with_token(req: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

async fn send(req: reqwest::RequestBuilder) -> Result<Reply, reqwest::Error> {
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await?;
    Ok(Reply { status, body: decode(&bytes) })
}

/// JSON, else the text (lossy), else `Null` when empty.
fn decode(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_decode_as_json_text_or_null() {
        assert_eq!(decode(br#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(decode(b"weixin://wxpay/bizpayurl?pr=x"), json!("weixin://wxpay/bizpayurl?pr=x"));
        assert_eq!(decode(b""), Value::Null);
    }

    #[test]
    fn base_url_loses_its_trailing_slash() {
        let api = MerchantApi::new(reqwest::Client::new(), "http://127.0.0.1:1/", None);
        assert_eq!(api.url("/api/products"), "http://127.0.0.1:1/api/products");
    }
}
