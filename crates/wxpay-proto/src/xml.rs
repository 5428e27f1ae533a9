//! The flat `<xml><name>value</name>...</xml>` codec of API v2.
//!
//! Writing puts every value in CDATA (splitting `]]>` so that any string survives). Reading
//! accepts element text and CDATA alike, keeps every field, and is hardened: a size cap, UTF-8
//! only, no DOCTYPE, no entities beyond the five predefined ones (character references are fine),
//! no nesting, no duplicate fields. It never panics, whatever the bytes.

use std::ops::Range;

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
///
/// Two readers give one result: a fast one for the shape every real message has, which gives up
/// on anything else, and the full reader (quick-xml), which decides everything the fast one gave
/// up on, errors included.
pub fn parse_with(body: &[u8], limits: XmlLimits) -> Result<Fields, XmlError> {
    let text = checked_text(body, limits)?;
    match parse_flat_fast(text, limits) {
        Some(flat) => Ok(Fields::from_sorted_unique(flat.values, flat.fields)),
        None => parse_full(text, limits),
    }
}

/// The checks made on the raw bytes: size cap, UTF-8 (validated once, here), a leading BOM
/// dropped, not blank.
fn checked_text(body: &[u8], limits: XmlLimits) -> Result<&str, XmlError> {
    if body.len() > limits.max_body {
        return Err(XmlError::TooLarge { limit: limits.max_body });
    }
    let text = std::str::from_utf8(body).map_err(|e| XmlError::NotUtf8 { offset: e.valid_up_to() })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(XmlError::Empty);
    }
    Ok(text)
}

/// What the fast reader found: every value, back to back, in one buffer, and the fields (sorted
/// by name, no name twice) with where their value is in it.
#[derive(Debug, PartialEq)]
struct Flat<'a> {
    values: String,
    fields: Vec<(&'a str, Range<usize>)>,
}

/// The fast reader, for exactly this shape (which is what WeChat and [`to_xml`] write):
///
/// ```text
/// ws <root> ( ws <name> (text | <![CDATA[...]]>)* </name> | ws <name/> )* ws </root> ws
/// ```
///
/// where names are ASCII `[A-Za-z0-9_.:-]+` with no attributes, `ws` is ASCII whitespace, and
/// text holds no `<` (entities in it are resolved by quick-xml's own `unescape`, the function
/// the full reader uses). Names are borrowed from `text`; values are copied once, straight into
/// the buffer the [`Fields`] keep.
///
/// It never decides an error: anything outside that shape (declarations, comments, attributes,
/// nesting, a bad entity, a duplicate name, too many fields, ...) gives `None`, and the caller
/// runs the full reader, which then reports exactly what it always has. So for every input the
/// two-reader [`parse_with`] returns what the full reader alone returns (a property test checks
/// this on arbitrary inputs).
fn parse_flat_fast(text: &str, limits: XmlLimits) -> Option<Flat<'_>> {
    let b = text.as_bytes();
    let mut i = skip_blank(b, 0);
    if b.get(i) != Some(&b'<') {
        return None;
    }
    let root = name_at(text, i + 1)?;
    i += 1 + root.len();
    if b.get(i) != Some(&b'>') {
        return None;
    }
    i += 1;

    // Values are never longer than the text they come from (unescaping only shortens).
    let mut values = String::with_capacity(text.len());
    let mut fields: Vec<(&str, Range<usize>)> = Vec::with_capacity(32);
    loop {
        i = skip_blank(b, i);
        if b.get(i) != Some(&b'<') {
            return None;
        }
        if b.get(i + 1) == Some(&b'/') {
            i = end_tag_at(b, i, root)?;
            if b[i..].iter().all(u8::is_ascii_whitespace) {
                break;
            }
            return None;
        }
        let name = name_at(text, i + 1)?;
        i += 1 + name.len();
        if fields.len() >= limits.max_fields {
            return None;
        }
        let start = values.len();
        match b.get(i) {
            Some(b'>') => i += 1,
            Some(b'/') if b.get(i + 1) == Some(&b'>') => {
                fields.push((name, start..start));
                i += 2;
                continue;
            }
            _ => return None,
        }
        // The value: text and CDATA sections, in any order, up to `</name>`.
        loop {
            if b.get(i) != Some(&b'<') {
                let lt = i + text[i..].find('<')?;
                let raw = &text[i..lt];
                if raw.contains('&') {
                    values.push_str(&quick_xml::escape::unescape(raw).ok()?);
                } else {
                    values.push_str(raw);
                }
                i = lt;
            }
            let rest = &b[i + 1..];
            if rest.starts_with(b"![CDATA[") {
                let from = i + 1 + b"![CDATA[".len();
                let to = cdata_end(text, from)?;
                values.push_str(&text[from..to]);
                i = to + b"]]>".len();
            } else if rest.first() == Some(&b'/') {
                i = end_tag_at(b, i, name)?;
                break;
            } else {
                return None;
            }
        }
        fields.push((name, start..values.len()));
    }

    // Often sorted already (to_xml writes in name order): then one pass checks both.
    if !fields.windows(2).all(|w| w[0].0 < w[1].0) {
        fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
        if fields.windows(2).any(|w| w[0].0 == w[1].0) {
            return None;
        }
    }
    Some(Flat { values, fields })
}

/// Where the first `]]>` at or after `start` begins (as quick-xml finds the end of a CDATA
/// section), with a byte search for `>` rather than a substring searcher.
#[inline]
fn cdata_end(text: &str, start: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut from = start;
    loop {
        let gt = from + text[from..].find('>')?;
        if gt >= start + 2 && &b[gt - 2..gt] == b"]]" {
            return Some(gt - 2);
        }
        from = gt + 1;
    }
}

/// Skips ASCII whitespace (the same test as [`is_blank`]).
#[inline]
fn skip_blank(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// A non-empty name of `[A-Za-z0-9_.:-]` starting at `i`.
#[inline]
fn name_at(text: &str, i: usize) -> Option<&str> {
    let name = text.as_bytes().get(i..)?;
    let len = name.iter().position(|&c| !NAME_BYTE[usize::from(c)]).unwrap_or(name.len());
    // Name bytes are ASCII, so both ends are character boundaries.
    if len > 0 {
        text.get(i..i + len)
    } else {
        None
    }
}

/// `[A-Za-z0-9_.:-]`, as a table.
const NAME_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-');
        c += 1;
    }
    table
};

/// `</name>` exactly, at `i`; returns the index after it.
#[inline]
fn end_tag_at(b: &[u8], i: usize, name: &str) -> Option<usize> {
    let name_end = i + 2 + name.len();
    (b.get(i..i + 2) == Some(b"</")
        && b.get(i + 2..name_end) == Some(name.as_bytes())
        && b.get(name_end) == Some(&b'>'))
    .then_some(name_end + 1)
}

/// The full reader: every construct quick-xml knows, each problem with its own error.
fn parse_full(text: &str, limits: XmlLimits) -> Result<Fields, XmlError> {
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

    /// What `parse_with` returned before the fast reader existed: the full reader alone.
    fn full_only(body: &[u8], limits: XmlLimits) -> Result<Fields, XmlError> {
        parse_full(checked_text(body, limits)?, limits)
    }

    #[test]
    fn fast_reader_takes_the_usual_shapes() {
        let shapes: [&[u8]; 6] = [
            b"<xml><a><![CDATA[x<y]]></a><b>1</b><c>&lt;&amp;&#20013;</c><d/></xml>",
            b"\xef\xbb\xbf\n<xml>\n  <b>2</b>\r\n  <a><![CDATA[1]]></a>\n</xml>\n",
            b"<root><a>x]]>y</a><b> <![CDATA[1]]]]><![CDATA[>2]]> </b></root>",
            b"<xml><a></a><b><![CDATA[]]></b></xml>",
            b"<xml></xml>",
            b"<xml><req_info>a+b/c==</req_info><return_code>SUCCESS</return_code></xml>",
        ];
        for body in shapes {
            let text = checked_text(body, XmlLimits::default()).unwrap();
            let fast = parse_flat_fast(text, XmlLimits::default());
            assert!(fast.is_some(), "{:?}", String::from_utf8_lossy(body));
            let fast = fast.unwrap();
            assert_eq!(Ok(Fields::from_sorted_unique(fast.values, fast.fields)), full_only(body, XmlLimits::default()));
        }
        // Values go to one buffer in document order (unescaped, sections joined); fields sorted.
        let flat = parse_flat_fast(
            "<xml><b>&lt;</b><a><![CDATA[x]]></a><d/><c>1<![CDATA[2]]></c></xml>",
            XmlLimits::default(),
        );
        let fields = vec![("a", 1..2), ("b", 0..1), ("c", 2..4), ("d", 2..2)];
        assert_eq!(flat, Some(Flat { values: "<x12".to_owned(), fields }));
    }

    #[test]
    fn fast_reader_leaves_every_problem_to_the_full_reader() {
        let limits = XmlLimits::default();
        for body in [
            "<xml><a>&e;</a></xml>",
            "<xml><a><b>1</b></a></xml>",
            "<xml><a>1</a><a>2</a></xml>",
            "<xml><a>1</a><b/><a/></xml>",
            "<xml>hello<a>1</a></xml>",
            "<xml><a>1</a></xml><xml/>",
            "<xml><a>1</b></xml>",
            "<xml><a>1</a>",
            "<xml><a>1</a></xml >",
            "<xml><a>1</a ></xml>",
            "<xml><a x=\"1\">1</a></xml>",
            "<xml><a><!-- c -->1</a></xml>",
            "<?xml version=\"1.0\"?><xml><a>1</a></xml>",
            "<!DOCTYPE x><xml/>",
            "<xml/>",
            "<xml><a><![CDATA[1</a></xml>",
            "<xml><a>&#0;</a></xml>",
            "<xml><a>&amp</a></xml>",
            "<xml><\u{4e2d}>1</\u{4e2d}></xml>",
            "x<xml></xml>",
        ] {
            assert_eq!(parse_flat_fast(body, limits), None, "{body:?}");
            assert_eq!(parse_with(body.as_bytes(), limits), full_only(body.as_bytes(), limits), "{body:?}");
        }
        let two = XmlLimits { max_fields: 2, ..limits };
        assert_eq!(parse_flat_fast("<xml><a/><b/><c/></xml>", two), None);
        assert_eq!(parse_with(b"<xml><a/><b/><c/></xml>", two), Err(XmlError::TooManyFields(2)));
        assert!(parse_flat_fast("<xml><a/><b/></xml>", two).is_some());
    }

    mod agree {
        use proptest::prelude::*;

        use super::*;

        /// Pieces of a field's content: the fast shape and everything near it.
        fn segment() -> impl Strategy<Value = String> {
            prop_oneof![
                6 => "[a-z0-9 >\\]\u{4e2d}\u{1F600}]{0,6}",
                3 => "&(amp|lt|gt|quot|apos|#20013|#x4E2D);",
                1 => "&(e|#0|#x110000|#xZ|)(;)?",
                6 => any::<String>().prop_map(|s| format!("<![CDATA[{}]]>", s.replace("]]>", ""))),
                1 => Just("<![CDATA[]]>".to_owned()),
                1 => Just("<![CDATA[".to_owned()),
                1 => Just("]]>".to_owned()),
                2 => "[ \t\r\n\x0C]{0,3}",
                1 => Just("<!-- c -->".to_owned()),
                1 => Just("<?pi x?>".to_owned()),
                1 => Just("<b>1</b>".to_owned()),
                1 => Just("<b/>".to_owned()),
                1 => Just("<".to_owned()),
            ]
        }

        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                8 => prop::sample::select(vec!["a", "b", "appid", "sign", "x.y", "n:s", "a-b", "_1", "9"]).prop_map(str::to_owned),
                1 => "[a-zA-Z\u{4e2d}\\\"'=]{1,3}",
            ]
        }

        fn element() -> impl Strategy<Value = String> {
            (name(), prop::collection::vec(segment(), 0..4), 0..40u8, "[ \n\t]{0,2}").prop_map(|(n, segs, form, ws)| {
                let body = segs.concat();
                let elem = match form {
                    0 => format!("<{n}/>"),
                    1 => format!("<{n} />"),
                    2 => format!("<{n}>{body}</{n} >"),
                    3 => format!("<{n} a=\"1\">{body}</{n}>"),
                    4 => format!("<{n}>{body}</q>"),
                    _ => format!("<{n}>{body}</{n}>"),
                };
                format!("{ws}{elem}")
            })
        }

        fn document() -> impl Strategy<Value = String> {
            (
                prop_oneof![
                    8 => Just(""),
                    1 => prop::sample::select(vec!["\u{feff}", "\u{feff}\u{feff}", " \n", "<?xml version=\"1.0\"?>", "<!-- c -->", "x"]),
                ],
                prop::sample::select(vec!["xml", "xml", "root", "a"]),
                prop::collection::vec(element(), 0..6),
                prop_oneof![
                    8 => Just(""),
                    1 => prop::sample::select(vec!["\n", " text ", "<![CDATA[x]]>", "<!-- c -->"]),
                ],
                prop_oneof![
                    8 => prop::sample::select(vec!["", "\n", "\r\n "]),
                    1 => prop::sample::select(vec!["<xml/>", "x", "<!-- c -->", "<?pi?>"]),
                ],
                0..12u8,
            )
                .prop_map(|(prefix, root, elements, inside, suffix, close)| {
                    let close = match close {
                        0 => String::new(),
                        1 => format!("</{root} >"),
                        2 => "</other>".to_owned(),
                        _ => format!("</{root}>"),
                    };
                    format!("{prefix}<{root}>{}{inside}{close}{suffix}", elements.concat())
                })
        }

        fn limits() -> impl Strategy<Value = XmlLimits> {
            prop_oneof![
                6 => Just(XmlLimits::default()),
                1 => (0..6usize).prop_map(|max_fields| XmlLimits { max_fields, ..XmlLimits::default() }),
                1 => (0..200usize).prop_map(|max_body| XmlLimits { max_body, ..XmlLimits::default() }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            #[test]
            fn on_xmlish_documents(doc in document(), limits in limits()) {
                prop_assert_eq!(parse_with(doc.as_bytes(), limits), full_only(doc.as_bytes(), limits), "{:?}", doc);
            }

            #[test]
            fn on_written_messages(
                f in prop::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,15}", any::<String>(), 0..12),
                pretty in any::<bool>(),
            ) {
                let f: Fields = f.into_iter().collect();
                let mut doc = to_xml(&f);
                if pretty {
                    // Whitespace between the tags (inside fields, too: it is then part of the value).
                    doc = doc.replace("><", ">\n  <");
                }
                let text = checked_text(doc.as_bytes(), XmlLimits::default()).unwrap();
                prop_assert!(parse_flat_fast(text, XmlLimits::default()).is_some());
                let parsed = parse_with(doc.as_bytes(), XmlLimits::default());
                prop_assert_eq!(&parsed, &full_only(doc.as_bytes(), XmlLimits::default()));
                if !pretty {
                    prop_assert_eq!(parsed, Ok(f));
                }
            }

            #[test]
            fn on_token_soup(doc in "(<[a-z!?/]{0,4}|>|/>|\\]\\]>|<!\\[CDATA\\[|&[a-z#0-9]{0,5};?|[a-z0-9 \n]{0,6}|<xml>|</xml>|<a>|</a>){0,40}") {
                prop_assert_eq!(parse_with(doc.as_bytes(), XmlLimits::default()), full_only(doc.as_bytes(), XmlLimits::default()));
            }

            /// Text that starts like a WeChat message (a root and some well-formed fields), then
            /// goes anywhere: the fast reader reads the start and must agree wherever it ends.
            #[test]
            fn on_text_that_starts_like_a_message(doc in message_like()) {
                prop_assert_eq!(parse_with(doc.as_bytes(), XmlLimits::default()), full_only(doc.as_bytes(), XmlLimits::default()), "{:?}", doc);
            }

            /// A no-panic check: arbitrary text almost never has the fast reader's shape, so this
            /// exercises the full reader (the agreement is checked by the cases above).
            #[test]
            fn arbitrary_text_never_panics(doc in any::<String>()) {
                prop_assert_eq!(parse_with(doc.as_bytes(), XmlLimits::default()), full_only(doc.as_bytes(), XmlLimits::default()));
            }

            /// A no-panic check, as above, for arbitrary bytes (mostly not even UTF-8).
            #[test]
            fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
                prop_assert_eq!(parse_with(&body, XmlLimits::default()), full_only(&body, XmlLimits::default()));
            }
        }

        /// `<xml>` and well-formed fields, then arbitrary text (sometimes with more fields and the
        /// closing tag after it).
        fn message_like() -> impl Strategy<Value = String> {
            let field = ("[a-z_]{1,10}", any::<String>())
                .prop_map(|(n, v)| format!("<{n}><![CDATA[{}]]></{n}>", v.replace("]]>", "")));
            (
                prop::collection::vec(field.clone(), 1..5),
                prop_oneof![
                    2 => any::<String>(),
                    2 => "[a-z0-9<>/!\\[\\]&;# ]{0,12}",
                    3 => Just(String::new()),
                ],
                prop::collection::vec(field, 0..3),
                any::<bool>(),
            )
                .prop_map(|(head, middle, tail, close)| {
                    format!("<xml>{}{middle}{}{}", head.concat(), tail.concat(), if close { "</xml>" } else { "" })
                })
        }

        /// How often the fast reader decides the inputs of a generator (the rest go to the full
        /// reader): agreement tests are only worth something if both readers really run.
        fn fast_share<S: Strategy<Value = String>>(strategy: S) -> f64 {
            use proptest::strategy::ValueTree;
            let mut runner = proptest::test_runner::TestRunner::deterministic();
            let n = 2000;
            let fast = (0..n)
                .filter(|_| {
                    let doc = strategy.new_tree(&mut runner).unwrap().current();
                    checked_text(doc.as_bytes(), XmlLimits::default())
                        .is_ok_and(|text| parse_flat_fast(text, XmlLimits::default()).is_some())
                })
                .count();
            fast as f64 / n as f64
        }

        #[test]
        fn the_agreement_generators_reach_both_readers() {
            for (name, share) in
                [("xmlish documents", fast_share(document())), ("message-like text", fast_share(message_like()))]
            {
                assert!((0.2..=0.95).contains(&share), "{name}: the fast reader decided {share:.2} of the inputs");
            }
            // And the reason the arbitrary-input cases are only no-panic checks.
            assert!(fast_share(any::<String>()) < 0.01);
        }
    }

    #[test]
    fn writes_cdata_and_splits_the_terminator() {
        let f: Fields = [("a", "x]]>y"), ("b", "<&>")].into_iter().collect();
        let xml = to_xml(&f);
        assert_eq!(xml, "<xml><a><![CDATA[x]]]]><![CDATA[>y]]></a><b><![CDATA[<&>]]></b></xml>");
        assert_eq!(parse(xml.as_bytes()).unwrap(), f);
    }
}
