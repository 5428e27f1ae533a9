//! The OpenAPI 3.1 documents of the two JSON APIs, generated from the code:
//!
//! * `GET /admin/api/openapi.json`: the admin API (`/admin/api/...`, the bearer-authenticated QR
//!   sheet `/admin/products/qr-sheet`) and the till API (`/till/api/...`);
//! * `GET /api/openapi.json`: the mini-program API (`/api/...`).
//!
//! Each handler carries a `#[utoipa::path]` attribute and is registered with `utoipa_axum`'s
//! `routes!` ([`super::router`]), which takes the path and the method from that attribute: the
//! router and the document are built from the same list, so a route cannot be served without
//! being documented or documented without being served. The responses every operation of an API
//! shares (401, 403, 429, 503, ...) are added here by [`finish_admin`] and [`finish_mp`].
//!
//! Both documents are served without a credential (they hold no secrets, only the shape of the
//! API); the admin one sits behind the admin side's per-address rate limit like every other
//! admin route.

use axum::body::Bytes;
use axum::http::header;
use axum::routing::{get, MethodRouter};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, ObjectBuilder, OpenApi as Document, Ref, ResponseBuilder, Type};
use utoipa::{IntoResponses, Modify, OpenApi, PartialSchema};

use super::error::ErrorBody;
use crate::state::SharedState;

/// Where the admin API's document is served.
pub const ADMIN_DOC_PATH: &str = "/admin/api/openapi.json";
/// Where the mini-program API's document is served.
pub const MP_DOC_PATH: &str = "/api/openapi.json";
/// The security scheme of the admin and till APIs.
pub const ADMIN_TOKEN: &str = "admin_token";
/// The security scheme of the mini-program API.
pub const MP_SESSION: &str = "mp_session";

/// The admin API's document before the routes add their paths.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "wxpay admin API",
        description = "The JSON admin API of the wxpay merchant backend (WeChat Pay v2, 微信支付): orders, \
                       shipping (发货), refunds (申请退款), the catalogue, the audit log, webhook dead \
                       letters, the daily reconciliation (对账); and the till API of Native mode 1 \
                       (收银台, 扫码支付模式一). Errors are `{\"code\": \"STABLE_CODE\", \"message\": \"...\"}`. \
                       Times are RFC 3339 in Beijing time (`+08:00`); amounts are in fen (分, 100 = ¥1.00). \
                       An unknown or malformed query parameter is refused with a 400 whose body is plain \
                       text (the framework's).",
        license(name = "MIT OR Apache-2.0"),
    ),
    modifiers(&AdminSecurity),
    tags(
        (name = "orders", description = "Orders, their history and shipping"),
        (name = "refunds", description = "Refunds (申请退款)"),
        (name = "products", description = "The catalogue and its QR codes"),
        (name = "audit", description = "Who changed what"),
        (name = "webhooks", description = "Fulfilment webhook events that gave up (dead letters)"),
        (name = "reconciliations", description = "The daily bill reconciliation (对账)"),
        (name = "till", description = "The till of Native mode 1 (a token of any role)"),
    )
)]
pub struct AdminDoc;

/// The mini-program API's document before the routes add their paths.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "wxpay mini-program API",
        description = "The JSON API a WeChat mini-program (小程序) calls: login with the `wx.login` code, \
                       the catalogue, orders, and the parameters of `wx.requestPayment` (JSAPI payment). \
                       Errors are `{\"code\": \"STABLE_CODE\", \"message\": \"...\"}`. Times are RFC 3339 in \
                       Beijing time (`+08:00`); amounts are in fen (分, 100 = ¥1.00).",
        license(name = "MIT OR Apache-2.0"),
    ),
    modifiers(&MpSecurity),
    tags(
        (name = "session", description = "Login (code2session)"),
        (name = "products", description = "The products on sale"),
        (name = "orders", description = "The logged-in user's orders and their payment"),
    )
)]
pub struct MpDoc;

struct AdminSecurity;

impl Modify for AdminSecurity {
    fn modify(&self, doc: &mut Document) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "`Authorization: Bearer TOKEN`: a named admin token (`wxpay admin token add NAME --role \
                 owner|operator|viewer|till`; the store keeps only its SHA-256), or `server.admin_token` \
                 (the credential named `admin`, an owner). A `viewer` may only read (GET); a `till` token \
                 opens only `/till/api`. Never taken from a URL.",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(ADMIN_TOKEN, SecurityScheme::Http(scheme));
    }
}

struct MpSecurity;

impl Modify for MpSecurity {
    fn modify(&self, doc: &mut Document) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("opaque")
            .description(Some(
                "`Authorization: Bearer TOKEN` with the `token` from `POST /api/mp/login` (an opaque session \
                 token, valid for `expires_in` seconds; WeChat's session_key never leaves the server).",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(MP_SESSION, SecurityScheme::Http(scheme));
    }
}

fn operations_mut(doc: &mut Document) -> impl Iterator<Item = (&String, &mut Operation)> {
    doc.paths.paths.iter_mut().flat_map(|(path, item)| {
        [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head]
            .into_iter()
            .filter_map(|op| op.as_mut())
            .map(move |op| (path, op))
    })
}

fn uses_scheme(op: &Operation, scheme: &str) -> bool {
    op.security.iter().flatten().any(|requirement| {
        serde_json::to_value(requirement).is_ok_and(|v| v.as_object().is_some_and(|o| o.contains_key(scheme)))
    })
}

/// Adds an error answer (the [`ErrorBody`] schema) unless the handler documented that status.
fn add_error(op: &mut Operation, status: u16, description: &str, retry_after: bool) {
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build());
    if retry_after {
        let seconds = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1));
        response = response.header(
            "Retry-After",
            HeaderBuilder::new().schema(Some(seconds)).description(Some("Seconds to wait before trying again")).build(),
        );
    }
    op.responses.responses.entry(status.to_string()).or_insert_with(|| response.build().into());
}

fn add_common(doc: &mut Document) {
    doc.components
        .get_or_insert_with(Default::default)
        .schemas
        .insert("ErrorBody".to_owned(), <ErrorBody<'static> as PartialSchema>::schema());
    for (_, op) in operations_mut(doc) {
        if op.request_body.is_some() {
            add_error(op, 400, "`INVALID_INPUT`: malformed JSON, or a missing or mistyped field", false);
            add_error(op, 413, "`INVALID_INPUT`: the body is larger than `server.body_limit_bytes`", false);
            add_error(op, 415, "`INVALID_INPUT`: the body is not `Content-Type: application/json`", false);
        }
        add_error(op, 503, "`DATABASE_UNAVAILABLE` or `CACHE_UNAVAILABLE`: a dependency is down, try again", false);
    }
}

/// The admin document as served: the responses every admin and till operation shares.
/// Every operation of it needs an admin token (the handlers do not repeat it).
pub fn finish_admin(doc: &mut Document) {
    add_common(doc);
    for (path, op) in operations_mut(doc) {
        op.security.get_or_insert_with(|| vec![SecurityRequirement::new(ADMIN_TOKEN, Vec::<String>::new())]);
        add_error(op, 401, "`UNAUTHORIZED`: no admin token, or an unknown or revoked one", false);
        if !path.starts_with("/till/") {
            add_error(
                op,
                403,
                "`FORBIDDEN`: the token's role may not do this (a `viewer` only reads; a `till` token only \
                 opens `/till/api`)",
                false,
            );
        }
        add_error(
            op,
            429,
            "`RATE_LIMITED`: too many requests from this address (`server.auth_per_minute` after a burst of \
             `server.auth_burst`), checked before any credential",
            true,
        );
    }
}

/// The mini-program document as served: the responses every operation shares.
pub fn finish_mp(doc: &mut Document) {
    add_common(doc);
    for (_, op) in operations_mut(doc) {
        if uses_scheme(op, MP_SESSION) {
            add_error(
                op,
                401,
                "`UNAUTHORIZED`: no session token; `SESSION_EXPIRED`: the token expired or is unknown (log in \
                 again)",
                false,
            );
        }
    }
}

/// `GET` of a document, serialised once when the router is built.
pub fn serve(doc: &Document) -> MethodRouter<SharedState> {
    let body = Bytes::from(doc.to_json().expect("an OpenAPI document serialises to JSON"));
    get(move || {
        let body = body.clone();
        async move { ([(header::CONTENT_TYPE, "application/json")], body) }
    })
}

/// The refusals of a product looked up by its id for the till or its QR code.
#[derive(IntoResponses)]
pub enum ProductLookupErrors {
    #[response(status = 400, description = "`INVALID_INPUT`: a bad product id (or query parameter)")]
    BadInput(#[to_schema] ErrorBody<'static>),
    #[response(status = 404, description = "`PRODUCT_NOT_FOUND`")]
    NotFound(#[to_schema] ErrorBody<'static>),
    #[response(status = 409, description = "`PRODUCT_RETIRED`")]
    Retired(#[to_schema] ErrorBody<'static>),
}
