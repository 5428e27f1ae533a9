//! The flat `<xml><name>value</name>...</xml>` codec of API v2.
//!
//! Writing puts every value in CDATA (splitting `]]>` so that any string survives). Reading
//! accepts element text and CDATA alike, keeps every field, and is hardened: a size cap, UTF-8
//! only, no DOCTYPE, no entities beyond the five predefined ones (character references are fine),
//! no nesting, no duplicate fields. It never panics, whatever the bytes.

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::fields::Fields;

/// Limits applied to inbound XML.
#[derive(Debug, Clone, Copy)]
pub struct XmlLimits {
    /// Largest accepted body in bytes (default 64 KiB).
    pub max_body: usize,
    /// Most fields accepted in one message (refundquery with 50 refunds stays well below).
    pub max_fields: usize,
}

impl Default for XmlLimits {
    fn default() -> Self {
        XmlLimits { max_body: 64 * 1024, max_fields: 1024 }
    }
}

/// Why an inbound body was refused. Each variant names the problem precisely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("empty body")]
    Empty,
    #[error("body is larger than the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("body is not UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("DOCTYPE declarations are not allowed")]
    Doctype,
    #[error("entity &{0}; is not allowed (only the five predefined XML entities are)")]
    Entity(String),
    #[error("element <{0}> is nested; WeChat messages are flat")]
    Nested(String),
    #[error("field <{0}> appears more than once")]
    DuplicateField(String),
    #[error("more than {0} fields")]
    TooManyFields(usize),
    #[error("text outside of any field")]
    StrayText,
    #[error("no root element")]
    NoRoot,
    #[error("content after the root element")]
    TrailingContent,
    #[error("malformed XML: {0}")]
    Malformed(String),
}

/// Parses a flat XML message with the default limits.
pub fn parse(body: &[u8]) -> Result<Fields, XmlError> {
    parse_with(body, XmlLimits::default())
}

/// Parses a flat XML message. The root element's name is not checked (`<xml>` on the wire,
/// `<root>` inside a decrypted refund notification).
pub fn parse_with(body: &[u8], limits: XmlLimits) -> Result<Fields, XmlError> {
    if body.len() > limits.max_body {
        return Err(XmlError::TooLarge { limit: limits.max_body });
    }
    let text = std::str::from_utf8(body).map_err(|e| XmlError::NotUtf8 { offset: e.valid_up_to() })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(XmlError::Empty);
    }

    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(false);

    enum At {
        BeforeRoot,
        InRoot(Vec<u8>),
        InField { root: Vec<u8>, name: String, value: String },
        AfterRoot,
    }
    let mut at = At::BeforeRoot;
    let mut fields = Fields::new();

    loop {
        let event = reader.read_event().map_err(|e| XmlError::Malformed(e.to_string()))?;
        at = match (at, event) {
            (_, Event::DocType(_)) => return Err(XmlError::Doctype),
            (at, Event::Comment(_) | Event::PI(_)) => at,
            (At::BeforeRoot, Event::Decl(_)) => At::BeforeRoot,
            (at @ (At::BeforeRoot | At::AfterRoot), Event::Text(t)) if is_blank(&t) => at,
            (At::BeforeRoot, Event::Start(s)) => At::InRoot(s.name().as_ref().to_vec()),
            (At::BeforeRoot, Event::Empty(_)) => At::AfterRoot,
            (At::BeforeRoot, Event::Eof) => return Err(XmlError::NoRoot),
            (At::BeforeRoot, _) => return Err(XmlError::NoRoot),

            (At::InRoot(root), Event::Start(s)) => {
                At::InField { root, name: element_name(s.name().as_ref())?, value: String::new() }
            }
            (At::InRoot(root), Event::Empty(s)) => {
                insert(&mut fields, element_name(s.name().as_ref())?, String::new(), limits)?;
                At::InRoot(root)
            }
            (At::InRoot(root), Event::Text(t)) if is_blank(&t) => At::InRoot(root),
            (At::InRoot(_), Event::Text(_) | Event::CData(_)) => return Err(XmlError::StrayText),
            (At::InRoot(_), Event::End(_)) => At::AfterRoot,

            (At::InField { root, name, mut value }, Event::Text(t)) => {
                value.push_str(&unescape(&t)?);
                At::InField { root, name, value }
            }
            (At::InField { root, name, mut value }, Event::CData(c)) => {
                let raw = c.into_inner();
                // The input is valid UTF-8 and CDATA boundaries are ASCII, so this cannot fail.
                value.push_str(std::str::from_utf8(&raw).map_err(|e| XmlError::NotUtf8 { offset: e.valid_up_to() })?);
                At::InField { root, name, value }
            }
            (At::InField { name, .. }, Event::Start(_) | Event::Empty(_)) => return Err(XmlError::Nested(name)),
            (At::InField { root, name, value }, Event::End(_)) => {
                insert(&mut fields, name, value, limits)?;
                At::InRoot(root)
            }

            (At::AfterRoot, Event::Eof) => return Ok(fields),
            (At::AfterRoot, _) => return Err(XmlError::TrailingContent),
            (_, Event::Eof) => return Err(XmlError::Malformed("unexpected end of document".into())),
            (_, other) => return Err(XmlError::Malformed(format!("unexpected {other:?}"))),
        };
    }
}

fn is_blank(t: &quick_xml::events::BytesText<'_>) -> bool {
    t.iter().all(u8::is_ascii_whitespace)
}

fn element_name(raw: &[u8]) -> Result<String, XmlError> {
    std::str::from_utf8(raw).map(str::to_owned).map_err(|e| XmlError::NotUtf8 { offset: e.valid_up_to() })
}

fn unescape(t: &quick_xml::events::BytesText<'_>) -> Result<String, XmlError> {
    t.unescape().map(|c| c.into_owned()).map_err(|e| match e {
        quick_xml::Error::Escape(quick_xml::escape::EscapeError::UnrecognizedEntity(_, name)) => XmlError::Entity(name),
        other => XmlError::Malformed(other.to_string()),
    })
}

fn insert(fields: &mut Fields, name: String, value: String, limits: XmlLimits) -> Result<(), XmlError> {
    if fields.len() >= limits.max_fields {
        return Err(XmlError::TooManyFields(limits.max_fields));
    }
    fields.insert_new(name, value).map_err(XmlError::DuplicateField)
}

/// Writes `<xml>` with every value in CDATA, in field-name order.
pub fn to_xml(fields: &Fields) -> String {
    let mut out = String::with_capacity(16 + fields.iter().map(|(k, v)| 2 * k.len() + v.len() + 17).sum::<usize>());
    out.push_str("<xml>");
    for (name, value) in fields.iter() {
        out.push('<');
        out.push_str(name);
        out.push('>');
        push_cdata(&mut out, value);
        out.push_str("</");
        out.push_str(name);
        out.push('>');
    }
    out.push_str("</xml>");
    out
}

/// `]]>` cannot appear inside one CDATA section: end the section after `]]` and start a new one
/// before `>`, so `a]]>b` becomes `<![CDATA[a]]]]><![CDATA[>b]]>`.
fn push_cdata(out: &mut String, value: &str) {
    out.push_str("<![CDATA[");
    out.push_str(&value.replace("]]>", "]]]]><![CDATA[>"));
    out.push_str("]]>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_text_and_cdata_alike() {
        let f = parse(b"<xml><a><![CDATA[x<y]]></a><b>1</b><c>&lt;&amp;&#20013;</c><d/></xml>").unwrap();
        assert_eq!(f.get("a"), Some("x<y"));
        assert_eq!(f.get("b"), Some("1"));
        assert_eq!(f.get("c"), Some("<&中"));
        assert_eq!(f.get("d"), Some(""));
    }

    #[test]
    fn tolerates_declaration_whitespace_and_comments() {
        let f = parse(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<xml>\n  <a>1</a><!-- c -->\n</xml>\n").unwrap();
        assert_eq!(f.get("a"), Some("1"));
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn rejects_each_problem_with_its_own_error() {
        assert_eq!(parse(b""), Err(XmlError::Empty));
        assert_eq!(parse(b"  \n"), Err(XmlError::Empty));
        assert_eq!(parse(b"<xml><a>\xff</a></xml>"), Err(XmlError::NotUtf8 { offset: 8 }));
        assert_eq!(
            parse(
                b"<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><xml><a>&e;</a></xml>"
            ),
            Err(XmlError::Doctype)
        );
        assert_eq!(parse(b"<xml><a>&e;</a></xml>"), Err(XmlError::Entity("e".into())));
        assert_eq!(parse(b"<xml><a><b>1</b></a></xml>"), Err(XmlError::Nested("a".into())));
        assert_eq!(parse(b"<xml><a>1</a><a>2</a></xml>"), Err(XmlError::DuplicateField("a".into())));
        assert_eq!(parse(b"<xml>hello<a>1</a></xml>"), Err(XmlError::StrayText));
        assert_eq!(parse(b"<xml><a>1</a></xml><xml/>"), Err(XmlError::TrailingContent));
        assert!(matches!(parse(b"<xml><a>1</b></xml>"), Err(XmlError::Malformed(_))));
        assert!(matches!(parse(b"<xml><a>1</a>"), Err(XmlError::Malformed(_))));
        assert_eq!(parse(b"just text"), Err(XmlError::NoRoot));
        let big = vec![b' '; 64 * 1024 + 1];
        assert_eq!(parse(&big), Err(XmlError::TooLarge { limit: 64 * 1024 }));
        let small = XmlLimits { max_body: 10, ..XmlLimits::default() };
        assert_eq!(parse_with(b"<xml><a>1</a></xml>", small), Err(XmlError::TooLarge { limit: 10 }));
    }

    #[test]
    fn writes_cdata_and_splits_the_terminator() {
        let f: Fields = [("a", "x]]>y"), ("b", "<&>")].into_iter().collect();
        let xml = to_xml(&f);
        assert_eq!(xml, "<xml><a><![CDATA[x]]]]><![CDATA[>y]]></a><b><![CDATA[<&>]]></b></xml>");
        assert_eq!(parse(xml.as_bytes()).unwrap(), f);
    }
}
