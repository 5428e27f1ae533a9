//! The OpenAPI documents of the admin API (`/admin/api/openapi.json`, with the till API) and of
//! the mini-program API (`/api/openapi.json`): served as OpenAPI 3 JSON; every documented
//! operation is routed (and no other method on its path), every JSON route under `/api`,
//! `/admin/api` and `/till/api` is registered through the documented router, a list of known
//! routes is in the right document; every `$ref` resolves; real answers (and their statuses)
//! match the documented schemas.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::Duration;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use wxpay_proto::clock::Clock;
use wxpay_server::reconciliation::{beijing_day, day_bounds, reconcile_day};

const ADMIN_DOC: &str = "/admin/api/openapi.json";
const MP_DOC: &str = "/api/openapi.json";
const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// Every route the README lists, with the document it belongs to.
const KNOWN_ADMIN: &[(&str, &str)] = &[
    ("get", "/admin/api/orders"),
    ("get", "/admin/api/orders/{order_no}"),
    ("post", "/admin/api/orders/{order_no}/ship"),
    ("post", "/admin/api/orders/{order_no}/refunds"),
    ("get", "/admin/api/products"),
    ("post", "/admin/api/products"),
    ("put", "/admin/api/products/{id}"),
    ("delete", "/admin/api/products/{id}"),
    ("get", "/admin/api/products/{id}/{file}"),
    ("get", "/admin/api/audit"),
    ("get", "/admin/api/webhooks/dead"),
    ("post", "/admin/api/webhooks/{id}/resend"),
    ("get", "/admin/api/reconciliations"),
    ("get", "/admin/api/reconciliations/{date}"),
    ("get", "/admin/products/qr-sheet"),
    ("get", "/till/api/products/{id}"),
    ("get", "/till/api/products/{id}/qr.svg"),
    ("get", "/till/api/products/{id}/latest-order"),
];
const KNOWN_MP: &[(&str, &str)] = &[
    ("post", "/api/mp/login"),
    ("get", "/api/products"),
    ("post", "/api/orders"),
    ("get", "/api/orders"),
    ("get", "/api/orders/{order_no}"),
    ("post", "/api/orders/{order_no}/pay"),
    ("post", "/api/orders/{order_no}/cancel"),
];

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

async fn send(
    env: &TestEnv,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Answer {
    let mut req = env.http.request(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(), env.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    Answer { status, headers, text: resp.text().await.unwrap() }
}

async fn document(env: &TestEnv, path: &str) -> Value {
    let answer = send(env, "get", path, None, &[], None).await;
    assert_eq!(answer.status, 200, "{path}: {}", answer.text);
    let content_type = answer.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(content_type.starts_with("application/json"), "{path}: content-type {content_type}");
    serde_json::from_str(&answer.text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// (method, path template) of every documented operation.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, _) in item.as_object().unwrap() {
            assert!(METHODS.contains(&method.as_str()) || method == "head", "{method} {path}: unexpected key");
            ops.insert((method.clone(), path.clone()));
        }
    }
    ops
}

/// A concrete path for a template: parameters that name nothing that exists (no side effects).
fn concrete(template: &str) -> String {
    template
        .replace("{order_no}", "NOPE")
        .replace("{id}", "no-such-product")
        .replace("{file}", "qr.svg")
        .replace("{date}", "2020-01-01")
}

fn operation<'a>(doc: &'a Value, method: &str, template: &str) -> &'a Value {
    let op = &doc["paths"][template][method];
    assert!(op.is_object(), "{method} {template} is not documented");
    op
}

#[tokio::test]
async fn both_documents_are_served_without_a_token_as_openapi_3_json() {
    let env = TestEnv::start().await;
    for (path, title, scheme, prefixes) in [
        (ADMIN_DOC, "wxpay admin API", "admin_token", &["/admin/api/", "/admin/products/qr-sheet", "/till/api/"][..]),
        (MP_DOC, "wxpay mini-program API", "mp_session", &["/api/"][..]),
    ] {
        let doc = document(&env, path).await;
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{path}: {}", doc["openapi"]);
        assert_eq!(doc["info"]["title"], title);
        assert!(doc["info"]["version"].is_string());
        let security = &doc["components"]["securitySchemes"][scheme];
        assert_eq!((security["type"].as_str(), security["scheme"].as_str()), (Some("http"), Some("bearer")), "{path}");
        let ops = operations(&doc);
        assert!(ops.len() >= 7, "{path}: {ops:?}");
        let mut ids = BTreeSet::new();
        for (method, template) in &ops {
            assert!(prefixes.iter().any(|p| template.starts_with(p)), "{path} documents {method} {template}");
            let op = operation(&doc, method, template);
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {template}: no operationId"));
            assert!(ids.insert(id.to_owned()), "{path}: operationId {id} twice");
            assert!(op["summary"].is_string(), "{method} {template}: no summary");
            assert!(op["tags"].as_array().is_some_and(|t| !t.is_empty()), "{method} {template}: no tag");
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {template}: no success answer");
            assert!(responses.contains_key("503"), "{method} {template}: no 503");
        }
        if path == ADMIN_DOC {
            let refund = operation(&doc, "post", "/admin/api/orders/{order_no}/refunds");
            let key = refund["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "Idempotency-Key");
            let key = key.expect("the Idempotency-Key parameter");
            assert_eq!((key["in"].as_str(), key["required"].as_bool()), (Some("header"), Some(true)));
            for status in ["201", "202", "400", "404", "409", "422", "502"] {
                assert!(refund["responses"][status].is_object(), "refund: {status} not documented");
            }
        }
    }
    env.shutdown().await;
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_every_json_route_is_documented() {
    let env = TestEnv::start().await;
    let admin = document(&env, ADMIN_DOC).await;
    let mp = document(&env, MP_DOC).await;
    let admin_ops = operations(&admin);
    let mp_ops = operations(&mp);
    for (known, ops, name) in [(KNOWN_ADMIN, &admin_ops, "admin"), (KNOWN_MP, &mp_ops, "mini-program")] {
        for (method, path) in known {
            assert!(
                ops.contains(&(method.to_string(), path.to_string())),
                "{method} {path} missing from the {name} document"
            );
        }
    }
    assert!(admin_ops.is_disjoint(&mp_ops));

    // Every documented operation reaches a handler (the router's own 404 and 405 have no body;
    // a handler's 404 is a JSON error), and no other method is served on a documented path.
    for (method, template) in admin_ops.iter().chain(&mp_ops) {
        let path = concrete(template);
        let body = (method != "get" && method != "delete").then(|| json!({}));
        let answer = send(&env, method, &path, Some(ADMIN_TOKEN), &[], body.as_ref()).await;
        assert_ne!(answer.status, 405, "{method} {path}: not routed");
        if answer.status == 404 {
            assert!(answer.json()["code"].is_string(), "{method} {path}: the router's 404, not a handler's");
        }
        for other in METHODS.iter().filter(|m| !admin_ops.contains(&(m.to_string(), template.clone()))) {
            if mp_ops.contains(&(other.to_string(), template.clone())) {
                continue;
            }
            let answer = send(&env, other, &path, Some(ADMIN_TOKEN), &[], None).await;
            assert_eq!(answer.status, 405, "{other} {path} is served but not documented: {}", answer.text);
        }
    }
    // And the router's 404 for an undocumented path looks as assumed above.
    let answer = send(&env, "get", "/admin/api/no-such-thing", Some(ADMIN_TOKEN), &[], None).await;
    assert_eq!((answer.status, answer.text.as_str()), (404, ""));

    // No JSON route is registered around the documented routers (a bare `.route("/api/...")`).
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api");
    let mut scanned = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        scanned += 1;
        let source = std::fs::read_to_string(&path).unwrap();
        let compact: String = source.split_whitespace().collect();
        for call in [".route(\"", ".route_service(\"", ".nest(\"", ".nest_service(\""] {
            for (at, _) in compact.match_indices(call) {
                let target = &compact[at + call.len()..];
                assert!(
                    !["/api", "/admin/api", "/till/api"].iter().any(|p| target.starts_with(p)),
                    "{}: {}... registers a JSON route outside utoipa_axum's routes! (so undocumented)",
                    path.display(),
                    &compact[at..(at + 60).min(compact.len())]
                );
            }
        }
    }
    assert!(scanned >= 5, "scanned {scanned} files of {dir}");
    env.shutdown().await;
}

#[tokio::test]
async fn authentication_and_the_admin_rate_limit_cover_every_documented_operation() {
    let env = TestEnv::start().await;
    let admin = document(&env, ADMIN_DOC).await;
    let mp = document(&env, MP_DOC).await;
    for (doc, scheme) in [(&admin, "admin_token"), (&mp, "mp_session")] {
        for (method, template) in operations(doc) {
            let op = operation(doc, &method, &template);
            let secured = op["security"].as_array().is_some_and(|s| s.iter().any(|r| r.get(scheme).is_some()));
            let path = concrete(&template);
            let body = (method != "get" && method != "delete").then(|| json!({}));
            let answer = send(&env, &method, &path, None, &[], body.as_ref()).await;
            if secured {
                assert_eq!(answer.status, 401, "{method} {path} without a token: {}", answer.text);
                assert!(op["responses"]["401"].is_object(), "{method} {template}: 401 not documented");
            } else {
                assert_ne!(answer.status, 401, "{method} {path} is not documented as secured: {}", answer.text);
            }
        }
    }
    // Every admin operation is secured (only the two documents themselves are public).
    for (method, template) in operations(&admin) {
        let op = operation(&admin, &method, &template);
        assert!(op["security"][0]["admin_token"].is_array(), "{method} {template}: not secured");
        if template.starts_with("/admin/") {
            assert!(op["responses"]["403"].is_object(), "{method} {template}: 403 not documented");
        }
        let too_many = &op["responses"]["429"];
        assert!(too_many["headers"]["Retry-After"].is_object(), "{method} {template}: 429 without Retry-After");
    }
    env.shutdown().await;

    // With a burst of one, the admin document takes the one request: every admin operation is
    // then refused by the per-address limit before any credential is looked at.
    let env = TestEnv::start_with(|c, _| {
        c.server.auth_burst = 1;
        c.server.auth_per_minute = 1;
    })
    .await;
    document(&env, ADMIN_DOC).await;
    for (method, template) in operations(&admin) {
        let answer = send(&env, &method, &concrete(&template), Some(ADMIN_TOKEN), &[], None).await;
        assert_eq!(answer.status, 429, "{method} {template} is not behind the admin rate limit");
        assert!(answer.headers.contains_key("retry-after"), "{method} {template}");
    }
    assert_eq!(send(&env, "get", ADMIN_DOC, None, &[], None).await.status, 429);
    // The mini-program document and API are not behind the admin limit.
    document(&env, MP_DOC).await;
    assert_eq!(send(&env, "get", "/api/products", None, &[], None).await.status, 200);
    env.shutdown().await;
}

/// Every `$ref` in `value` (with where it is).
fn refs<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    out.push((at.clone(), v.as_str().unwrap_or("(not a string)")));
                } else {
                    refs(v, format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| refs(v, format!("{at}/{i}"), out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_ref_resolves_to_a_schema_and_every_security_requirement_to_a_scheme() {
    let env = TestEnv::start().await;
    for path in [ADMIN_DOC, MP_DOC] {
        let doc = document(&env, path).await;
        let schemas = doc["components"]["schemas"].as_object().expect("components.schemas");
        let mut found = Vec::new();
        refs(&doc, String::new(), &mut found);
        assert!(found.len() > 20, "{path}: only {} refs", found.len());
        let mut used = BTreeSet::new();
        for (at, target) in &found {
            let name = target.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{path} {at}: {target}"));
            assert!(schemas.contains_key(name), "{path} {at}: {target} does not resolve");
            used.insert(name.to_owned());
        }
        assert!(used.contains("ErrorBody"), "{path}");
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        for (method, template) in operations(&doc) {
            for requirement in operation(&doc, &method, &template)["security"].as_array().into_iter().flatten() {
                for name in requirement.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(name), "{path} {method} {template}: unknown scheme {name}");
                }
            }
        }
    }
    env.shutdown().await;
}

// ---- answers against their schemas ----

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(target) => {
            let name = target.strip_prefix("#/components/schemas/").expect("a local schema ref");
            let found = &doc["components"]["schemas"][name];
            assert!(found.is_object(), "{target} does not resolve");
            resolve(doc, found)
        }
        None => schema,
    }
}

/// The properties and required names of an object schema, through `allOf` (serde's flatten).
fn declared<'a>(
    doc: &'a Value,
    schema: &'a Value,
    props: &mut BTreeMap<String, &'a Value>,
    required: &mut BTreeSet<String>,
) {
    let schema = resolve(doc, schema);
    for part in schema["allOf"].as_array().into_iter().flatten() {
        declared(doc, part, props, required);
    }
    for (name, s) in schema["properties"].as_object().into_iter().flatten() {
        props.insert(name.clone(), s);
    }
    for name in schema["required"].as_array().into_iter().flatten() {
        required.insert(name.as_str().unwrap().to_owned());
    }
}

fn has_type(t: &str, value: &Value) -> bool {
    match t {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        other => panic!("unknown type {other}"),
    }
}

/// Checks `value` against `schema`: types, enums, formats, required properties, and no property
/// the schema does not declare (our answers are documented completely).
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(alternatives) = schema.get("oneOf").or_else(|| schema.get("anyOf")).and_then(Value::as_array) {
        let matching = alternatives
            .iter()
            .filter(|alt| {
                let mut e = Vec::new();
                check(doc, alt, value, at, &mut e);
                e.is_empty()
            })
            .count();
        if matching == 0 {
            errors.push(format!("{at}: {value} matches none of {alternatives:?}"));
        }
        return;
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            other => panic!("{at}: type {other}"),
        };
        if !types.iter().any(|t| has_type(t, value)) {
            errors.push(format!("{at}: {value} is not of type {types:?}"));
            return;
        }
    }
    if value.is_null() {
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            errors.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    match (schema.get("format").and_then(Value::as_str), value.as_str()) {
        (Some("date-time"), Some(s)) if chrono::DateTime::parse_from_rfc3339(s).is_err() => {
            errors.push(format!("{at}: {s:?} is not an RFC 3339 time"));
        }
        (Some("date"), Some(s)) if chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_err() => {
            errors.push(format!("{at}: {s:?} is not a date"));
        }
        _ => {}
    }
    if let Some(items) = schema.get("items") {
        for (i, item) in value.as_array().into_iter().flatten().enumerate() {
            check(doc, items, item, &format!("{at}[{i}]"), errors);
        }
    }
    let object_like = schema.get("properties").is_some() || schema.get("allOf").is_some();
    if let (true, Some(map)) = (object_like, value.as_object()) {
        let (mut props, mut required) = (BTreeMap::new(), BTreeSet::new());
        declared(doc, schema, &mut props, &mut required);
        for name in &required {
            if !map.contains_key(name) {
                errors.push(format!("{at}: required property {name} is missing"));
            }
        }
        for (name, v) in map {
            match props.get(name) {
                Some(s) => check(doc, s, v, &format!("{at}.{name}"), errors),
                None => errors.push(format!("{at}: property {name} is not documented")),
            }
        }
    } else if let (Some(extra @ Value::Object(_)), Some(map)) = (schema.get("additionalProperties"), value.as_object())
    {
        for (name, v) in map {
            check(doc, extra, v, &format!("{at}.{name}"), errors);
        }
    }
}

/// Sends the request, and checks that the status is documented for the operation and the body
/// matches the documented JSON schema of that status. Returns the answer's JSON.
#[allow(clippy::too_many_arguments)]
async fn checked(
    env: &TestEnv,
    doc: &Value,
    method: &str,
    template: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Value) {
    let answer = send(env, method, path, token, headers, body).await;
    let response = &operation(doc, method, template)["responses"][answer.status.to_string()];
    assert!(
        response.is_object(),
        "{method} {path} answered {}, which is not documented: {}",
        answer.status,
        answer.text
    );
    let schema = &response["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{method} {template} {}: no JSON schema", answer.status);
    let value: Value =
        serde_json::from_str(&answer.text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", answer.text));
    let mut errors = Vec::new();
    check(doc, schema, &value, "$", &mut errors);
    assert!(
        errors.is_empty(),
        "{method} {path} ({}) does not match its schema:\n{}\n{value:#}",
        answer.status,
        errors.join("\n")
    );
    (answer.status, value)
}

#[tokio::test]
async fn the_schema_check_finds_a_missing_required_property_an_undocumented_one_and_a_wrong_type() {
    let env = TestEnv::start().await;
    let doc = document(&env, MP_DOC).await;
    let schema = json!({"$ref": "#/components/schemas/OrderView"});
    let token = env.login("u-check").await;
    let order = env.create_order(&token, &[("cola", 1)]).await;
    let mut errors = Vec::new();
    check(&doc, &schema, &order, "$", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let mut broken = order.clone();
    broken.as_object_mut().unwrap().remove("paid_at");
    broken["surprise"] = json!(1);
    broken["amount_fen"] = json!("600");
    broken["status"] = json!("LOST");
    broken["created_at"] = json!("yesterday");
    check(&doc, &schema, &broken, "$", &mut errors);
    let text = errors.join("\n");
    for expected in ["paid_at is missing", "surprise is not documented", "amount_fen", "LOST", "yesterday"] {
        assert!(text.contains(expected), "no error about {expected}: {text}");
    }
    env.shutdown().await;
}

#[tokio::test]
async fn real_answers_match_the_documented_schemas_and_statuses() {
    let env = TestEnv::start().await;
    let admin = document(&env, ADMIN_DOC).await;
    let mp = document(&env, MP_DOC).await;
    let tok = Some(ADMIN_TOKEN);

    // The mini-program: login, catalogue, an order, its payment.
    let code = env.phone_code("u-doc").await;
    let (status, login) =
        checked(&env, &mp, "post", "/api/mp/login", "/api/mp/login", None, &[], Some(&json!({"code": code}))).await;
    assert_eq!(status, 200);
    let token = login["token"].as_str().unwrap().to_owned();
    let user = Some(token.as_str());
    checked(&env, &mp, "get", "/api/products", "/api/products", None, &[], None).await;
    let items = json!({"items": [{"product_id": "cola", "quantity": 2}]});
    let (status, order) = checked(&env, &mp, "post", "/api/orders", "/api/orders", user, &[], Some(&items)).await;
    assert_eq!(status, 201);
    let no = order["order_no"].as_str().unwrap().to_owned();
    let pay_path = format!("/api/orders/{no}/pay");
    let (_, params) = checked(&env, &mp, "post", "/api/orders/{order_no}/pay", &pay_path, user, &[], None).await;
    let paid = env.phone_pay("u-doc", &params, "pay").await;
    assert_eq!(paid["errMsg"], "requestPayment:ok", "{paid}");
    wait_for("the order to be PAID", 10, || async {
        (env.admin_detail(&no).await["order"]["status"] == "PAID").then_some(())
    })
    .await;
    let (status, _) = checked(&env, &mp, "post", "/api/orders/{order_no}/pay", &pay_path, user, &[], None).await;
    assert_eq!(status, 409);

    // A refund (201), then the same request again (the same answer), and another body (422).
    let refund_path = format!("/admin/api/orders/{no}/refunds");
    let refund_body = json!({"amount_fen": 150, "reason": "broken can"});
    let key = [("idempotency-key", "doc-refund-1")];
    let t = "/admin/api/orders/{order_no}/refunds";
    let (status, refund) = checked(&env, &admin, "post", t, &refund_path, tok, &key, Some(&refund_body)).await;
    assert_eq!(status, 201, "{refund}");
    assert_eq!(checked(&env, &admin, "post", t, &refund_path, tok, &key, Some(&refund_body)).await.0, 201);
    let other = json!({"amount_fen": 151, "reason": "broken can"});
    assert_eq!(checked(&env, &admin, "post", t, &refund_path, tok, &key, Some(&other)).await.0, 422);
    assert_eq!(checked(&env, &admin, "post", t, &refund_path, tok, &[], Some(&refund_body)).await.0, 400);
    let too_much = json!({"amount_fen": 100_000, "reason": "all"});
    let key2 = [("idempotency-key", "doc-refund-2")];
    assert_eq!(checked(&env, &admin, "post", t, &refund_path, tok, &key2, Some(&too_much)).await.0, 409);

    // The user's views and the admin's.
    let order_path = format!("/api/orders/{no}");
    let (_, mine) = checked(&env, &mp, "get", "/api/orders/{order_no}", &order_path, user, &[], None).await;
    assert_eq!(mine["refunds"].as_array().map(Vec::len), Some(1));
    checked(&env, &mp, "get", "/api/orders", "/api/orders", user, &[], None).await;
    assert_eq!(checked(&env, &mp, "get", "/api/orders", "/api/orders", None, &[], None).await.0, 401);
    let detail_path = format!("/admin/api/orders/{no}");
    let (_, detail) = checked(&env, &admin, "get", "/admin/api/orders/{order_no}", &detail_path, tok, &[], None).await;
    for list in ["refunds", "events", "notifications", "outbox"] {
        assert!(detail[list].as_array().is_some_and(|l| !l.is_empty()), "{list} is empty: {detail:#}");
    }
    assert!(detail["refunds"][0]["events"].as_array().is_some_and(|l| !l.is_empty()));
    checked(&env, &admin, "get", "/admin/api/orders", "/admin/api/orders?status=PARTIALLY_REFUNDED", tok, &[], None)
        .await;
    let ship_path = format!("/admin/api/orders/{no}/ship");
    let t = "/admin/api/orders/{order_no}/ship";
    assert_eq!(checked(&env, &admin, "post", t, &ship_path, tok, &[], None).await.0, 200);
    assert_eq!(checked(&env, &admin, "post", t, &ship_path, tok, &[], None).await.0, 200);
    let (_, unpaid) = checked(&env, &mp, "post", "/api/orders", "/api/orders", user, &[], Some(&items)).await;
    let unpaid = unpaid["order_no"].as_str().unwrap().to_owned();
    assert_eq!(
        checked(&env, &admin, "post", t, &format!("/admin/api/orders/{unpaid}/ship"), tok, &[], None).await.0,
        409
    );
    let t = "/api/orders/{order_no}/cancel";
    let (status, closed) =
        checked(&env, &mp, "post", t, &format!("/api/orders/{unpaid}/cancel"), user, &[], None).await;
    assert_eq!((status, closed["status"].as_str()), (200, Some("CLOSED")));
    let t = "/admin/api/orders/{order_no}";
    assert_eq!(checked(&env, &admin, "get", t, "/admin/api/orders/NOPE", tok, &[], None).await.0, 404);
    assert_eq!(checked(&env, &admin, "get", t, &detail_path, None, &[], None).await.0, 401);

    // The catalogue and its audit log.
    let new = json!({"id": "doctea", "name": "Tea", "price_fen": 300});
    let (status, _) =
        checked(&env, &admin, "post", "/admin/api/products", "/admin/api/products", tok, &[], Some(&new)).await;
    assert_eq!(status, 201);
    assert_eq!(
        checked(&env, &admin, "post", "/admin/api/products", "/admin/api/products", tok, &[], Some(&new)).await.0,
        409
    );
    let t = "/admin/api/products/{id}";
    let patch = json!({"price_fen": 350});
    checked(&env, &admin, "put", t, "/admin/api/products/doctea", tok, &[], Some(&patch)).await;
    checked(&env, &admin, "delete", t, "/admin/api/products/doctea", tok, &[], None).await;
    assert_eq!(checked(&env, &admin, "delete", t, "/admin/api/products/doctea", tok, &[], None).await.0, 409);
    checked(&env, &admin, "get", "/admin/api/products", "/admin/api/products", tok, &[], None).await;
    let (_, audit) =
        checked(&env, &admin, "get", "/admin/api/audit", "/admin/api/audit?subject=product:doctea", tok, &[], None)
            .await;
    assert_eq!(audit.as_array().map(Vec::len), Some(3));
    checked(&env, &admin, "get", "/admin/api/webhooks/dead", "/admin/api/webhooks/dead", tok, &[], None).await;
    let t = "/admin/api/webhooks/{id}/resend";
    assert_eq!(checked(&env, &admin, "post", t, "/admin/api/webhooks/1/resend", tok, &[], None).await.0, 404);

    // The till.
    checked(&env, &admin, "get", "/till/api/products/{id}", "/till/api/products/cola", tok, &[], None).await;

    // The day's reconciliation, once the bill is there.
    let day = beijing_day(env.clock.now());
    env.clock.set(day_bounds(day).1 + Duration::hours(11));
    reconcile_day(env.state(), day).await.unwrap();
    let (_, days) =
        checked(&env, &admin, "get", "/admin/api/reconciliations", "/admin/api/reconciliations", tok, &[], None).await;
    assert_eq!(days.as_array().map(Vec::len), Some(1), "{days}");
    let t = "/admin/api/reconciliations/{date}";
    let (_, one) = checked(&env, &admin, "get", t, &format!("/admin/api/reconciliations/{day}"), tok, &[], None).await;
    assert!(one["bill_rows"].as_i64().is_some_and(|n| n >= 1), "{one}");
    assert_eq!(checked(&env, &admin, "get", t, "/admin/api/reconciliations/2020-01-01", tok, &[], None).await.0, 404);
    assert_eq!(checked(&env, &admin, "get", t, "/admin/api/reconciliations/yesterday", tok, &[], None).await.0, 400);
    env.shutdown().await;
}
