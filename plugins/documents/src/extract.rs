//! Text extraction: turns an uploaded document (plain text, Markdown, HTML, PDF or DOCX)
//! into the plain text the job summarises.
//!
//! Every format is read with pure-Rust code that returns errors instead of panicking and
//! that does not recurse on the document's structure without a bound, because a plugin
//! runs with `panic=abort` semantics and a small stack: a panic or a stack overflow would
//! kill the job instead of failing it with a message.
//!
//! - **Plain text / Markdown**: must be UTF-8 (a leading byte-order mark is dropped);
//!   returned as is.
//! - **HTML** ([`html5gum`], a WHATWG tokenizer with no recursion): the visible text, with
//!   `script`, `style`, `title`, `template`, `noscript`, `iframe` and elements carrying the
//!   `hidden` attribute left out; whitespace collapsed as a browser does (kept inside
//!   `pre`), block elements on lines of their own (paragraph-like ones separated by a
//!   blank line), `br` a line break, table cells separated by tabs. Invalid UTF-8 is
//!   replaced by U+FFFD (HTML in the wild often is Latin-1).
//! - **PDF** ([`lopdf`]): the text operators of every page, pages separated by a blank
//!   line. The page tree is walked here, with a visited set and a depth bound, so a tree
//!   that loops back on itself is [`ExtractError::Invalid`] rather than an endless walk.
//!   A file without `%%EOF` in its last KiB is taken as truncated. Decompressed page and
//!   font streams count against [`ExtractLimits::max_unpacked_bytes`], for the whole file.
//! - **DOCX** ([`zip`] + [`quick_xml`]): `word/document.xml`, streamed: paragraphs become
//!   lines, `w:tab` a tab, `w:br`/`w:cr` a newline; `mc:Fallback` copies (duplicates of
//!   text boxes) and tab-stop definitions are skipped. The archive may hold at most
//!   [`MAX_ZIP_ENTRIES`] entries, and the member is read through
//!   `Read::take(max_unpacked_bytes + 1)`, whatever sizes the archive declares.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::{self, BufReader, Cursor, Read};

use lopdf::content::Content;
use lopdf::{DecompressError, Dictionary, Document, Encoding, LoadOptions, Object, ObjectId};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Most entries a DOCX (zip) archive may have.
pub const MAX_ZIP_ENTRIES: usize = 10_000;
/// Deepest PDF page tree accepted (real ones are a few levels deep).
const MAX_PDF_TREE_DEPTH: usize = 256;
/// The member of a DOCX archive that holds the document's body.
const DOCX_BODY: &str = "word/document.xml";

/// Limits extraction obeys; a file beyond them fails with `ExtractError::TooLarge`/`Invalid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractLimits {
    /// Largest input file, in bytes; checked before any parsing.
    pub max_input_bytes: usize,
    /// Largest extracted text, in bytes (UTF-8).
    pub max_text_bytes: usize,
    /// Most bytes decompressed from one file: the DOCX body member, or all the page and
    /// font streams of a PDF together.
    pub max_unpacked_bytes: u64,
}

impl Default for ExtractLimits {
    /// 16 MiB of input, 4 MiB of text, 64 MiB unpacked.
    fn default() -> Self {
        ExtractLimits {
            max_input_bytes: 16 * MIB as usize,
            max_text_bytes: 4 * MIB as usize,
            max_unpacked_bytes: 64 * MIB,
        }
    }
}

/// The formats understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    PlainText,
    Markdown,
    Html,
    Pdf,
    Docx,
}

impl Format {
    /// From a content type (parameters like `; charset=utf-8` ignored), falling back to
    /// sniffing the bytes (`%PDF-`, `PK\x03\x04` + word/document.xml, `<html`/`<!doctype
    /// html` case-insensitive, valid UTF-8 → plain text). None when unknown.
    ///
    /// `head` is the start of the file (the whole file is best: a DOCX is recognised by the
    /// name `word/document.xml`, which may sit in the central directory at the end). Text
    /// containing NUL bytes is not taken for plain text.
    pub fn detect(content_type: &str, head: &[u8]) -> Option<Format> {
        Self::from_content_type(content_type).or_else(|| Self::sniff(head))
    }

    fn from_content_type(content_type: &str) -> Option<Format> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        let known = [
            ("text/plain", Format::PlainText),
            ("text/markdown", Format::Markdown),
            ("text/x-markdown", Format::Markdown),
            ("text/html", Format::Html),
            ("application/xhtml+xml", Format::Html),
            ("application/pdf", Format::Pdf),
            ("application/x-pdf", Format::Pdf),
            (
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                Format::Docx,
            ),
        ];
        known
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(essence))
            .map(|&(_, format)| format)
    }

    fn sniff(head: &[u8]) -> Option<Format> {
        if head.starts_with(b"%PDF-") {
            return Some(Format::Pdf);
        }
        if head.starts_with(b"PK\x03\x04") {
            // A zip that is not a Word document is nothing we read (not even as text).
            return contains(head, DOCX_BODY.as_bytes()).then_some(Format::Docx);
        }
        let text = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
        let start = text
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(text.len());
        let text = &text[start..];
        if starts_with_tag(text, b"<!doctype html") || starts_with_tag(text, b"<html") {
            return Some(Format::Html);
        }
        let utf8 = match std::str::from_utf8(head) {
            Ok(_) => true,
            // Only a character cut off at the end of `head` (a prefix of the file).
            Err(e) => e.error_len().is_none(),
        };
        (utf8 && !head.contains(&0)).then_some(Format::PlainText)
    }

    /// How the format is named in messages.
    fn label(self) -> &'static str {
        match self {
            Format::PlainText => "plain-text",
            Format::Markdown => "Markdown",
            Format::Html => "HTML",
            Format::Pdf => "PDF",
            Format::Docx => "DOCX",
        }
    }
}

/// `text` starts with `tag` (ASCII case-insensitive), followed by the end of the input,
/// whitespace, `>` or `/`.
fn starts_with_tag(text: &[u8], tag: &[u8]) -> bool {
    text.len() >= tag.len()
        && text[..tag.len()].eq_ignore_ascii_case(tag)
        && text
            .get(tag.len())
            .is_none_or(|&b| b.is_ascii_whitespace() || b == b'>' || b == b'/')
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Why a file's text could not be extracted. The message (see `Display`) is meant for the
/// person who uploaded it.
#[derive(Debug)]
pub enum ExtractError {
    /// The file uses something not supported (encryption, an unusual compression method).
    Unsupported(String),
    /// The file, its unpacked content or its text is over one of the [`ExtractLimits`].
    TooLarge(String),
    /// The file is damaged, truncated, or not of the format it claims.
    Invalid(String),
}

impl fmt::Display for ExtractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtractError::Unsupported(m) => write!(f, "unsupported document: {m}"),
            ExtractError::TooLarge(m) => write!(f, "document too large: {m}"),
            ExtractError::Invalid(m) => write!(f, "invalid document: {m}"),
        }
    }
}

impl std::error::Error for ExtractError {}

/// A byte count for messages: "16 MiB", "1.5 MiB", "300 KiB", "12 bytes".
fn size(n: u64) -> String {
    let unit = |n: u64, unit: u64, name: &str| {
        if n.is_multiple_of(unit) {
            return format!("{} {name}", n / unit);
        }
        let rounded = format!("{:.1}", n as f64 / unit as f64);
        if rounded.ends_with(".0") {
            // "16.0 MiB" next to a 16 MiB limit would say nothing.
            format!("{n} bytes")
        } else {
            format!("{rounded} {name}")
        }
    };
    if n >= MIB {
        unit(n, MIB, "MiB")
    } else if n >= KIB {
        unit(n, KIB, "KiB")
    } else {
        format!("{n} bytes")
    }
}

fn usize_size(n: usize) -> String {
    size(u64::try_from(n).unwrap_or(u64::MAX))
}

fn invalid(format: Format, what: impl fmt::Display) -> ExtractError {
    ExtractError::Invalid(format!("the {} file {what}", format.label()))
}

/// Extracts the text of `bytes`, read as `format`, within `limits`.
pub fn extract_text(
    bytes: &[u8],
    format: Format,
    limits: &ExtractLimits,
) -> Result<String, ExtractError> {
    if bytes.len() > limits.max_input_bytes {
        return Err(ExtractError::TooLarge(format!(
            "the {} file is {}, over the {} limit for uploaded files",
            format.label(),
            usize_size(bytes.len()),
            usize_size(limits.max_input_bytes),
        )));
    }
    let mut sink = Sink::new(format, limits.max_text_bytes);
    match format {
        Format::PlainText | Format::Markdown => utf8_text(bytes, &mut sink)?,
        Format::Html => html_text(bytes, &mut sink)?,
        Format::Pdf => pdf_text(bytes, limits, &mut sink)?,
        Format::Docx => docx_text(bytes, limits, &mut sink)?,
    }
    Ok(sink.text)
}

/// The extracted text, refusing to grow past the text limit.
struct Sink {
    text: String,
    max: usize,
    format: Format,
}

impl Sink {
    fn new(format: Format, max: usize) -> Self {
        Sink {
            text: String::new(),
            max,
            format,
        }
    }

    fn remaining(&self) -> usize {
        self.max.saturating_sub(self.text.len())
    }

    /// Fails when `more` bytes of text would not fit.
    fn reserve(&self, more: usize) -> Result<(), ExtractError> {
        if more > self.remaining() {
            return Err(ExtractError::TooLarge(format!(
                "the text of the {} file is over the {} limit for extracted text",
                self.format.label(),
                usize_size(self.max),
            )));
        }
        Ok(())
    }

    fn push_str(&mut self, s: &str) -> Result<(), ExtractError> {
        self.reserve(s.len())?;
        self.text.push_str(s);
        Ok(())
    }

    fn push(&mut self, c: char) -> Result<(), ExtractError> {
        self.reserve(c.len_utf8())?;
        self.text.push(c);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Plain text and Markdown

fn utf8_text(bytes: &[u8], sink: &mut Sink) -> Result<(), ExtractError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    sink.reserve(bytes.len())?;
    match std::str::from_utf8(bytes) {
        Ok(text) => sink.push_str(text),
        Err(e) => Err(invalid(
            sink.format,
            format_args!(
                "is not valid UTF-8 (the first bad byte is at offset {})",
                e.valid_up_to()
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------------
// HTML

/// Elements whose content is not shown.
#[rustfmt::skip]
const HTML_HIDDEN: &[&[u8]] = &[
    b"script", b"style", b"title", b"template", b"noscript", b"iframe", b"noembed", b"noframes",
];
/// Elements that have no end tag.
#[rustfmt::skip]
const HTML_VOID: &[&[u8]] = &[
    b"area", b"base", b"br", b"col", b"embed", b"hr", b"img", b"input", b"keygen", b"link",
    b"meta", b"param", b"source", b"track", b"wbr",
];
/// Elements whose end tag may be left out.
#[rustfmt::skip]
const HTML_OPTIONAL_END: &[&[u8]] = &[
    b"html", b"head", b"body", b"p", b"li", b"dt", b"dd", b"rt", b"rp", b"optgroup", b"option",
    b"colgroup", b"caption", b"thead", b"tbody", b"tfoot", b"tr", b"td", b"th",
];
/// Blocks set off by a blank line.
#[rustfmt::skip]
const HTML_PARAGRAPHS: &[&[u8]] = &[
    b"p", b"h1", b"h2", b"h3", b"h4", b"h5", b"h6", b"pre", b"listing", b"blockquote", b"ul",
    b"ol", b"dl", b"table", b"hr", b"figure", b"address", b"fieldset", b"details",
];
/// Blocks on lines of their own.
#[rustfmt::skip]
const HTML_LINES: &[&[u8]] = &[
    b"html", b"body", b"div", b"li", b"dt", b"dd", b"tr", b"caption", b"header", b"footer",
    b"main", b"nav", b"section", b"article", b"aside", b"figcaption", b"legend", b"summary",
    b"form", b"option", b"center", b"hgroup", b"menu", b"dir", b"dialog", b"search",
    b"thead", b"tbody", b"tfoot", b"textarea", b"select",
];
/// Elements whose text keeps its whitespace.
const HTML_PRE: &[&[u8]] = &[b"pre", b"listing", b"textarea"];

/// What separates the text written next from the text before it; stronger ones win.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Gap {
    None,
    Space,
    Tab,
    Line,
    Paragraph,
}

/// Writes HTML text as a browser lays it out, roughly.
struct Flow<'a> {
    sink: &'a mut Sink,
    gap: Gap,
}

impl Flow<'_> {
    fn gap(&mut self, gap: Gap) {
        self.gap = self.gap.max(gap);
    }

    fn line_break(&mut self) {
        self.gap = if self.gap >= Gap::Line {
            Gap::Paragraph
        } else {
            Gap::Line
        };
    }

    /// Writes the pending gap, unless nothing was written yet.
    fn flush(&mut self) -> Result<(), ExtractError> {
        let gap = std::mem::replace(&mut self.gap, Gap::None);
        if self.sink.text.is_empty() {
            return Ok(());
        }
        match gap {
            Gap::None => Ok(()),
            Gap::Space => self.sink.push(' '),
            Gap::Tab => self.sink.push('\t'),
            Gap::Line => self.sink.push('\n'),
            Gap::Paragraph => self.sink.push_str("\n\n"),
        }
    }

    /// Text with its whitespace collapsed.
    fn text(&mut self, text: &str) -> Result<(), ExtractError> {
        let mut words = text.split([' ', '\t', '\n', '\r', '\x0C']);
        if let Some(first) = words.next()
            && !first.is_empty()
        {
            self.flush()?;
            self.sink.push_str(first)?;
        }
        for word in words {
            self.gap(Gap::Space);
            if !word.is_empty() {
                self.flush()?;
                self.sink.push_str(word)?;
            }
        }
        Ok(())
    }

    /// Preformatted text, as is.
    fn raw(&mut self, text: &str) -> Result<(), ExtractError> {
        if text.is_empty() {
            return Ok(());
        }
        self.flush()?;
        self.sink.push_str(text)
    }
}

fn html_text(bytes: &[u8], sink: &mut Sink) -> Result<(), ExtractError> {
    use html5gum::{DefaultEmitter, Token, Tokenizer};

    let mut emitter = DefaultEmitter::default();
    // Script, style and the like switch the tokenizer to their raw-text states, as the
    // tree builder of a browser would.
    emitter.naively_switch_states(true);
    let mut flow = Flow {
        sink,
        gap: Gap::None,
    };
    // The hidden element being skipped, and how many of its kind are open.
    let mut hidden: Option<(Vec<u8>, usize)> = None;
    let mut pre_depth = 0usize;
    // Just after `<pre>`: a leading newline there is not shown.
    let mut pre_start = false;

    for Ok(token) in Tokenizer::new_with_emitter(bytes, emitter) {
        match token {
            Token::StartTag(tag) => {
                let name = tag.name.as_slice();
                let void = HTML_VOID.contains(&name);
                if let Some((skipped, open)) = &mut hidden {
                    if skipped.as_slice() == name && !void {
                        *open += 1;
                    }
                    continue;
                }
                // `hidden` is honoured only where the end tag is certain to come (a `<p>`
                // may end at the next `<p>`, and skipping to a `</p>` never written would
                // hide the rest of the page).
                let hidden_attr = !void
                    && !HTML_OPTIONAL_END.contains(&name)
                    && tag.attributes.keys().any(|k| k.as_slice() == b"hidden");
                if HTML_HIDDEN.contains(&name) || hidden_attr {
                    hidden = Some((name.to_vec(), 1));
                    continue;
                }
                pre_start = false;
                if name == b"br" {
                    flow.line_break();
                } else if name == b"td" || name == b"th" {
                    flow.gap(Gap::Tab);
                } else if HTML_PARAGRAPHS.contains(&name) {
                    flow.gap(Gap::Paragraph);
                } else if HTML_LINES.contains(&name) {
                    flow.gap(Gap::Line);
                }
                if HTML_PRE.contains(&name) {
                    pre_depth += 1;
                    pre_start = true;
                }
            }
            Token::EndTag(tag) => {
                let name = tag.name.as_slice();
                if let Some((skipped, open)) = &mut hidden {
                    if skipped.as_slice() == name {
                        *open -= 1;
                        if *open == 0 {
                            hidden = None;
                        }
                    }
                    continue;
                }
                pre_start = false;
                if HTML_PRE.contains(&name) {
                    pre_depth = pre_depth.saturating_sub(1);
                }
                if HTML_PARAGRAPHS.contains(&name) {
                    flow.gap(Gap::Paragraph);
                } else if HTML_LINES.contains(&name) {
                    flow.gap(Gap::Line);
                } else if name == b"br" {
                    // `</br>` is read as `<br>` by browsers.
                    flow.line_break();
                }
            }
            Token::String(text) if hidden.is_none() => {
                let text = String::from_utf8_lossy(&text);
                if pre_depth > 0 {
                    let text = if pre_start {
                        text.strip_prefix('\n').unwrap_or(&text)
                    } else {
                        &text
                    };
                    flow.raw(text)?;
                } else {
                    flow.text(&text)?;
                }
                pre_start = false;
            }
            _ => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// PDF

fn pdf_text(bytes: &[u8], limits: &ExtractLimits, sink: &mut Sink) -> Result<(), ExtractError> {
    let format = Format::Pdf;
    if !contains(&bytes[..bytes.len().min(1024)], b"%PDF-") {
        return Err(invalid(format, "is not a PDF (it has no %PDF- header)"));
    }
    if !contains(&bytes[bytes.len().saturating_sub(1024)..], b"%%EOF") {
        return Err(invalid(format, "is truncated (it does not end with %%EOF)"));
    }
    let unpack_limit = usize::try_from(limits.max_unpacked_bytes).unwrap_or(usize::MAX);
    let options = LoadOptions {
        max_decompressed_size: Some(unpack_limit),
        ..LoadOptions::default()
    };
    let doc = Document::load_mem_with_options(bytes, options).map_err(|e| pdf_error(e, limits))?;
    if doc.is_encrypted() {
        return Err(pdf_encrypted());
    }

    let pages = pdf_pages(&doc)?;
    let mut reader = PdfText {
        doc: &doc,
        budget: unpack_limit,
        limits,
        encodings: HashMap::new(),
    };
    let mut unreadable = 0usize;
    for page in pages.iter().copied() {
        let text = match reader.page(page, sink.remaining())? {
            Some(text) => text,
            None => {
                unreadable += 1;
                continue;
            }
        };
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        if !sink.text.is_empty() {
            sink.push_str("\n\n")?;
        }
        sink.push_str(text)?;
    }
    if sink.text.is_empty() && unreadable > 0 {
        return Err(invalid(
            format,
            format_args!(
                "is damaged: none of its {} pages could be read",
                pages.len()
            ),
        ));
    }
    Ok(())
}

fn pdf_encrypted() -> ExtractError {
    ExtractError::Unsupported(
        "the PDF file is encrypted (password-protected); save a copy without the password and upload that"
            .to_string(),
    )
}

fn pdf_too_large(limits: &ExtractLimits) -> ExtractError {
    ExtractError::TooLarge(format!(
        "the compressed streams of the PDF file unpack to more than the {} limit",
        size(limits.max_unpacked_bytes)
    ))
}

fn pdf_error(error: lopdf::Error, limits: &ExtractLimits) -> ExtractError {
    match error {
        lopdf::Error::Decompress(DecompressError::MemoryLimitExceeded { .. }) => {
            pdf_too_large(limits)
        }
        lopdf::Error::InvalidPassword
        | lopdf::Error::Decryption(_)
        | lopdf::Error::AlreadyEncrypted => pdf_encrypted(),
        other => invalid(Format::Pdf, format_args!("could not be read ({other})")),
    }
}

/// A reference loop or runaway nesting in the object graph: the file is broken.
fn is_loop(error: &lopdf::Error) -> bool {
    matches!(
        error,
        lopdf::Error::ReferenceCycle(_)
            | lopdf::Error::ReferenceLimit
            | lopdf::Error::RecursionLimit
    )
}

fn pdf_loop(what: impl fmt::Display) -> ExtractError {
    invalid(
        Format::Pdf,
        format_args!("is damaged: {what} refers back to itself"),
    )
}

/// The pages in order, walking the page tree with a visited set: a node met twice (the
/// tree loops, or shares a node) makes the file invalid.
fn pdf_pages(doc: &Document) -> Result<Vec<ObjectId>, ExtractError> {
    let format = Format::Pdf;
    let catalog = doc.catalog().map_err(|e| {
        if is_loop(&e) {
            pdf_loop("its catalog")
        } else {
            invalid(
                format,
                format_args!("is damaged: it has no document catalog ({e})"),
            )
        }
    })?;
    let root = catalog
        .get(b"Pages")
        .and_then(Object::as_reference)
        .map_err(|_| invalid(format, "is damaged: it has no page tree"))?;

    let mut pages = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(root, 0usize)];
    while let Some((id, depth)) = stack.pop() {
        if !seen.insert(id) {
            return Err(pdf_loop(format_args!(
                "its page tree (object {} {})",
                id.0, id.1
            )));
        }
        if depth > MAX_PDF_TREE_DEPTH {
            return Err(invalid(
                format,
                "is damaged: its page tree is nested too deeply",
            ));
        }
        let node = match doc.get_dictionary(id) {
            Ok(node) => node,
            Err(e) if is_loop(&e) => {
                return Err(pdf_loop(format_args!("object {} {}", id.0, id.1)));
            }
            Err(_) if id == root => {
                return Err(invalid(format, "is damaged: its page tree is missing"));
            }
            // A missing or broken page: read the others, as viewers do.
            Err(_) => continue,
        };
        let is_tree = match node.get(b"Type").and_then(Object::as_name) {
            Ok(b"Pages") => true,
            Ok(b"Page") => false,
            _ => node.has(b"Kids"),
        };
        if !is_tree {
            pages.push(id);
            continue;
        }
        let kids = match node.get_deref(b"Kids", doc).and_then(Object::as_array) {
            Ok(kids) => kids.as_slice(),
            Err(e) if is_loop(&e) => {
                return Err(pdf_loop(format_args!(
                    "the page list of object {} {}",
                    id.0, id.1
                )));
            }
            Err(_) => &[],
        };
        // Reversed, so that pages come off the stack in document order.
        for kid in kids.iter().rev() {
            if let Ok(kid) = kid.as_reference() {
                stack.push((kid, depth + 1));
            }
        }
    }
    Ok(pages)
}

/// Reads the text of pages, charging what it decompresses to one budget.
struct PdfText<'a> {
    doc: &'a Document,
    /// Bytes that may still be decompressed.
    budget: usize,
    limits: &'a ExtractLimits,
    /// Each font's encoding, by the address of its dictionary (fonts are shared by pages;
    /// each is decoded once). `None` for a font whose encoding could not be read.
    encodings: HashMap<*const Dictionary, Option<Encoding<'a>>>,
}

impl<'a> PdfText<'a> {
    fn charge(&mut self, bytes: usize) -> Result<(), ExtractError> {
        self.budget = self
            .budget
            .checked_sub(bytes)
            .ok_or_else(|| pdf_too_large(self.limits))?;
        Ok(())
    }

    fn lopdf_error(&self, error: lopdf::Error) -> ExtractError {
        match error {
            lopdf::Error::Decompress(DecompressError::MemoryLimitExceeded { .. }) => {
                pdf_too_large(self.limits)
            }
            e if is_loop(&e) => pdf_loop("its page tree"),
            e => invalid(Format::Pdf, format_args!("could not be read ({e})")),
        }
    }

    /// The fonts of a page, by resource name, decoding each new one.
    fn fonts(
        &mut self,
        page: ObjectId,
    ) -> Result<BTreeMap<Vec<u8>, *const Dictionary>, ExtractError> {
        let doc = self.doc;
        let fonts = match doc.get_page_fonts(page) {
            Ok(fonts) => fonts,
            Err(e) if is_loop(&e) => return Err(pdf_loop("its page tree")),
            Err(_) => BTreeMap::new(),
        };
        let mut names = BTreeMap::new();
        for (name, font) in fonts {
            let key = font as *const Dictionary;
            if !self.encodings.contains_key(&key) {
                // The streams an encoding decompresses (a ToUnicode map, an embedded CMap)
                // count against the budget, once per font.
                let mut unpacked = 0usize;
                for entry in [&b"ToUnicode"[..], b"Encoding"] {
                    let Ok(stream) = font.get_deref(entry, doc).and_then(Object::as_stream) else {
                        continue;
                    };
                    match stream.decompressed_content_with_limit(self.budget) {
                        Ok(data) => unpacked = unpacked.saturating_add(data.len()),
                        Err(lopdf::Error::Decompress(DecompressError::MemoryLimitExceeded {
                            ..
                        })) => return Err(pdf_too_large(self.limits)),
                        Err(_) => {}
                    }
                }
                let encoding = match font.get_font_encoding_with_limit(doc, self.budget) {
                    Ok(encoding) => Some(encoding),
                    Err(lopdf::Error::Decompress(DecompressError::MemoryLimitExceeded {
                        ..
                    })) => {
                        return Err(pdf_too_large(self.limits));
                    }
                    Err(_) => None,
                };
                self.charge(unpacked)?;
                self.encodings.insert(key, encoding);
            }
            names.insert(name, key);
        }
        Ok(names)
    }

    /// The text of one page (at most `max_text` bytes, else `TooLarge`), or `None` when
    /// its content cannot be read at all.
    fn page(&mut self, page: ObjectId, max_text: usize) -> Result<Option<String>, ExtractError> {
        let fonts = self.fonts(page)?;
        let content = match self.doc.get_page_content_with_limit(page, self.budget) {
            Ok(content) => content,
            Err(e @ lopdf::Error::Decompress(DecompressError::MemoryLimitExceeded { .. })) => {
                return Err(self.lopdf_error(e));
            }
            Err(e) if is_loop(&e) => return Err(self.lopdf_error(e)),
            Err(_) => return Ok(None),
        };
        self.charge(content.len())?;

        let too_much = || {
            ExtractError::TooLarge(format!(
                "the text of the PDF file is over the {} limit for extracted text",
                usize_size(self.limits.max_text_bytes)
            ))
        };
        let mut text = String::new();
        let mut encoding: Option<&Encoding<'a>> = None;
        let mut last_tm_y: Option<f32> = None;
        for (index, operation) in Content::decode_iter(&content).enumerate() {
            let Ok(operation) = operation else {
                // Keep what was read before the damage; a page with nothing is unreadable.
                if index == 0 {
                    return Ok(None);
                }
                break;
            };
            let operands = &operation.operands;
            match operation.operator.as_str() {
                "Tf" => {
                    encoding = operands
                        .first()
                        .and_then(|name| name.as_name().ok())
                        .and_then(|name| fonts.get(name))
                        .and_then(|key| self.encodings.get(key))
                        .and_then(Option::as_ref);
                }
                "Tj" | "TJ" => show_text(&mut text, encoding, operands),
                "'" => {
                    new_line(&mut text);
                    show_text(&mut text, encoding, operands);
                }
                "\"" => {
                    new_line(&mut text);
                    show_text(&mut text, encoding, operands.get(2..).unwrap_or_default());
                }
                "T*" | "ET" => new_line(&mut text),
                "Td" | "TD" => {
                    let tx = operands
                        .first()
                        .and_then(|o| o.as_float().ok())
                        .unwrap_or(0.0);
                    let ty = operands
                        .get(1)
                        .and_then(|o| o.as_float().ok())
                        .unwrap_or(0.0);
                    if ty != 0.0 {
                        new_line(&mut text);
                    } else if tx > 0.0 {
                        space(&mut text);
                    }
                }
                "Tm" => {
                    let y = operands.get(5).and_then(|o| o.as_float().ok());
                    if y != last_tm_y {
                        new_line(&mut text);
                    } else {
                        space(&mut text);
                    }
                    last_tm_y = y;
                }
                _ => {}
            }
            if text.trim_end().len() > max_text {
                return Err(too_much());
            }
        }
        Ok(Some(text))
    }
}

/// The strings of a text-showing operator; in a `TJ` array, a shift of more than a tenth
/// of an em is taken for a space.
fn show_text(text: &mut String, encoding: Option<&Encoding<'_>>, operands: &[Object]) {
    let Some(encoding) = encoding else { return };
    for operand in operands {
        match operand {
            Object::String(bytes, _) => {
                // Undecodable bytes are left out.
                let _ = encoding.write_to_string(bytes, text);
            }
            Object::Array(items) => {
                for item in items {
                    match item {
                        Object::String(bytes, _) => {
                            let _ = encoding.write_to_string(bytes, text);
                        }
                        Object::Integer(_) | Object::Real(_)
                            if item.as_float().is_ok_and(|shift| shift < -100.0) =>
                        {
                            space(text);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

fn new_line(text: &mut String) {
    while text.ends_with([' ', '\t']) {
        text.pop();
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
}

fn space(text: &mut String) {
    if !text.is_empty() && !text.ends_with(char::is_whitespace) {
        text.push(' ');
    }
}

// ---------------------------------------------------------------------------------------
// DOCX

/// Counts the bytes read through it.
struct Counted<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read = self
            .read
            .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        Ok(n)
    }
}

fn docx_too_many_entries(count: usize) -> ExtractError {
    ExtractError::TooLarge(format!(
        "the DOCX file has {count} entries, over the limit of {MAX_ZIP_ENTRIES}"
    ))
}

/// The entry count the last end-of-central-directory record in `bytes` declares, unless
/// it defers to a zip64 record (0xFFFF).
fn declared_zip_entries(bytes: &[u8]) -> Option<usize> {
    // The record is 22 bytes plus a comment of at most 65535.
    let tail = &bytes[bytes.len().saturating_sub(22 + 65535)..];
    let at = tail.windows(4).rposition(|w| w == b"PK\x05\x06")?;
    let field = tail.get(at + 10..at + 12)?;
    let count = u16::from_le_bytes([field[0], field[1]]);
    (count != u16::MAX).then_some(usize::from(count))
}

fn zip_error(error: zip::result::ZipError) -> ExtractError {
    use zip::result::ZipError;
    match error {
        ZipError::InvalidPassword => ExtractError::Unsupported(
            "the DOCX file is password-protected; save a copy without the password and upload that".to_string(),
        ),
        ZipError::UnsupportedArchive(what) if what == ZipError::PASSWORD_REQUIRED => ExtractError::Unsupported(
            "the DOCX file is password-protected; save a copy without the password and upload that".to_string(),
        ),
        ZipError::UnsupportedArchive(what) => {
            ExtractError::Unsupported(format!("the DOCX file uses a zip feature that is not supported ({what})"))
        }
        ZipError::CompressionMethodNotSupported(method) => ExtractError::Unsupported(format!(
            "the DOCX file uses zip compression method {method}; only stored and deflated entries are supported"
        )),
        other => invalid(Format::Docx, format_args!("is not a readable zip archive ({other})")),
    }
}

fn docx_text(bytes: &[u8], limits: &ExtractLimits, sink: &mut Sink) -> Result<(), ExtractError> {
    if let Some(count) = declared_zip_entries(bytes)
        && count > MAX_ZIP_ENTRIES
    {
        return Err(docx_too_many_entries(count));
    }
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(zip_error)?;
    if archive.len() > MAX_ZIP_ENTRIES {
        return Err(docx_too_many_entries(archive.len()));
    }
    let member = match archive.by_name(DOCX_BODY) {
        Ok(member) => member,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(invalid(
                Format::Docx,
                format_args!("is not a Word document (it has no {DOCX_BODY})"),
            ));
        }
        Err(e) => return Err(zip_error(e)),
    };
    // Whatever size the archive declares, at most one byte over the limit comes out.
    let max = limits.max_unpacked_bytes;
    let mut counted = Counted {
        inner: member.take(max.saturating_add(1)),
        read: 0,
    };
    let result = docx_body(BufReader::new(&mut counted), sink);
    if counted.read > max {
        return Err(ExtractError::TooLarge(format!(
            "{DOCX_BODY} in the DOCX file unpacks to more than the {} limit",
            size(max)
        )));
    }
    result
}

/// Writes DOCX text; newlines wait for the text after them, so that the text neither
/// starts nor ends with one.
struct Lines<'a> {
    sink: &'a mut Sink,
    newlines: usize,
}

impl Lines<'_> {
    fn newline(&mut self) {
        self.newlines += 1;
    }

    fn push_str(&mut self, s: &str) -> Result<(), ExtractError> {
        if s.is_empty() {
            return Ok(());
        }
        if !self.sink.text.is_empty() {
            for _ in 0..self.newlines {
                self.sink.push('\n')?;
            }
        }
        self.newlines = 0;
        self.sink.push_str(s)
    }

    fn push(&mut self, c: char) -> Result<(), ExtractError> {
        self.push_str(c.encode_utf8(&mut [0; 4]))
    }
}

/// The text of `word/document.xml`.
fn docx_body<R: io::BufRead>(input: R, sink: &mut Sink) -> Result<(), ExtractError> {
    use quick_xml::events::Event;

    let bad_xml = |e: quick_xml::Error| match e {
        quick_xml::Error::Io(e) => invalid(
            Format::Docx,
            format_args!("is damaged: {DOCX_BODY} could not be unpacked ({e})"),
        ),
        e => invalid(
            Format::Docx,
            format_args!("is damaged: {DOCX_BODY} is not valid XML ({e})"),
        ),
    };
    let mut reader = quick_xml::Reader::from_reader(input);
    let mut buf = Vec::new();
    let mut out = Lines { sink, newlines: 0 };
    let mut is_document = false;
    // Depths: inside `w:t` (text), `mc:Fallback` (a copy of content shown elsewhere),
    // `w:tabs` (tab stop definitions, whose `w:tab` are no tab characters).
    let mut in_text = 0usize;
    let mut in_fallback = 0usize;
    let mut in_tabs = 0usize;
    loop {
        let event = reader.read_event_into(&mut buf).map_err(bad_xml)?;
        let shown = in_fallback == 0;
        match event {
            Event::Start(e) => match e.name().as_ref() {
                "w:document" => is_document = true,
                "w:t" => in_text += 1,
                "mc:Fallback" => in_fallback += 1,
                "w:tabs" => in_tabs += 1,
                "w:tab" if shown && in_tabs == 0 => out.push('\t')?,
                "w:br" | "w:cr" if shown => out.newline(),
                _ => {}
            },
            Event::Empty(e) => match e.name().as_ref() {
                "w:document" => is_document = true,
                "w:tab" if shown && in_tabs == 0 => out.push('\t')?,
                "w:br" | "w:cr" | "w:p" if shown => out.newline(),
                "w:noBreakHyphen" if shown => out.push('-')?,
                _ => {}
            },
            Event::End(e) => match e.name().as_ref() {
                "w:t" => in_text = in_text.saturating_sub(1),
                "mc:Fallback" => in_fallback = in_fallback.saturating_sub(1),
                "w:tabs" => in_tabs = in_tabs.saturating_sub(1),
                "w:p" if shown => out.newline(),
                _ => {}
            },
            Event::Text(t) if in_text > 0 && shown => out.push_str(&t.xml10_content())?,
            Event::CData(t) if in_text > 0 && shown => out.push_str(&t.xml10_content())?,
            Event::GeneralRef(r) if in_text > 0 && shown => {
                if let Ok(Some(c)) = r.resolve_char_ref() {
                    out.push(c)?;
                } else if let Some(s) = quick_xml::escape::resolve_xml_entity(&r) {
                    out.push_str(s)?;
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !is_document {
        return Err(invalid(
            Format::Docx,
            format_args!("is not a Word document ({DOCX_BODY} has no w:document)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    fn limits() -> ExtractLimits {
        ExtractLimits::default()
    }

    fn extract(bytes: &[u8], format: Format) -> Result<String, ExtractError> {
        extract_text(bytes, format, &limits())
    }

    #[track_caller]
    fn assert_too_large(result: Result<String, ExtractError>) {
        match result {
            Err(ExtractError::TooLarge(m)) => assert!(!m.is_empty()),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[track_caller]
    fn assert_invalid(result: Result<String, ExtractError>) {
        match result {
            Err(ExtractError::Invalid(m)) => assert!(!m.is_empty()),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    // --- fixtures -----------------------------------------------------------------------

    /// A PDF of `objects` (object `i + 1` is `objects[i]`), with a correct xref table and
    /// `/Root 1 0 R`.
    fn pdf(objects: &[Vec<u8>]) -> Vec<u8> {
        let mut out = b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n".to_vec();
        let mut offsets = Vec::new();
        for (i, body) in objects.iter().enumerate() {
            offsets.push(out.len());
            out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
            out.extend_from_slice(body);
            out.extend_from_slice(b"\nendobj\n");
        }
        let xref = out.len();
        out.extend_from_slice(
            format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
        );
        for offset in offsets {
            out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
        }
        out.extend_from_slice(
            format!(
                "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
                objects.len() + 1
            )
            .as_bytes(),
        );
        out
    }

    fn stream(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut out = format!("<< {dict} /Length {} >>\nstream\n", data.len()).into_bytes();
        out.extend_from_slice(data);
        out.extend_from_slice(b"\nendstream");
        out
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut encoder =
            flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    const FONT: &str =
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>";

    fn page_content(lines: &[&str]) -> Vec<u8> {
        let mut content = String::from("BT /F1 12 Tf 72 720 Td\n");
        for line in lines {
            content.push_str(&format!("({line}) Tj 0 -14 Td\n"));
        }
        content.push_str("ET");
        content.into_bytes()
    }

    /// A PDF with one page per entry of `pages`, each showing its lines; the second page's
    /// content is compressed.
    fn text_pdf(pages: &[&[&str]]) -> Vec<u8> {
        let n = pages.len();
        // 1 catalog, 2 pages, 3 font, then per page: page object, content stream.
        let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 4 + 2 * i)).collect();
        let mut objects = vec![
            b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
            format!("<< /Type /Pages /Kids [{}] /Count {n} >>", kids.join(" ")).into_bytes(),
            FONT.as_bytes().to_vec(),
        ];
        for (i, lines) in pages.iter().enumerate() {
            objects.push(
                format!(
                    "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
                    5 + 2 * i
                )
                .into_bytes(),
            );
            let content = page_content(lines);
            objects.push(if i == 1 {
                stream("/Filter /FlateDecode", &deflate(&content))
            } else {
                stream("", &content)
            });
        }
        pdf(&objects)
    }

    /// A DOCX holding `document_xml` as word/document.xml, plus `extra` empty entries.
    fn docx_with(document_xml: &[u8], extra: usize) -> Vec<u8> {
        use zip::write::SimpleFileOptions;
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let deflated =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("[Content_Types].xml", deflated).unwrap();
        zip.write_all(br#"<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>"#)
            .unwrap();
        zip.start_file(DOCX_BODY, deflated).unwrap();
        zip.write_all(document_xml).unwrap();
        let stored =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for i in 0..extra {
            zip.start_file(format!("word/media/{i}.bin"), stored)
                .unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    fn document_xml(body: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006"><w:body>{body}</w:body></w:document>"#
        )
    }

    fn docx(body: &str) -> Vec<u8> {
        docx_with(document_xml(body).as_bytes(), 0)
    }

    /// A zip written by hand: one deflated member `name` whose data is `compressed`, with
    /// the sizes and CRC it declares given by the caller (so they can lie).
    fn raw_zip(name: &str, compressed: &[u8], crc: u32, declared_size: u32) -> Vec<u8> {
        let name = name.as_bytes();
        let mut out = Vec::new();
        let compressed_len = u32::try_from(compressed.len()).unwrap();
        let common = |out: &mut Vec<u8>| {
            out.extend_from_slice(&20u16.to_le_bytes()); // version needed
            out.extend_from_slice(&0u16.to_le_bytes()); // flags
            out.extend_from_slice(&8u16.to_le_bytes()); // deflate
            out.extend_from_slice(&0u32.to_le_bytes()); // time, date
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&compressed_len.to_le_bytes());
            out.extend_from_slice(&declared_size.to_le_bytes());
            out.extend_from_slice(&u16::try_from(name.len()).unwrap().to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes()); // extra field length
        };
        out.extend_from_slice(b"PK\x03\x04");
        common(&mut out);
        out.extend_from_slice(name);
        out.extend_from_slice(compressed);
        let directory = out.len();
        out.extend_from_slice(b"PK\x01\x02");
        out.extend_from_slice(&20u16.to_le_bytes()); // version made by
        common(&mut out);
        out.extend_from_slice(&[0; 6]); // comment length, disk, internal attrs
        out.extend_from_slice(&0u32.to_le_bytes()); // external attrs
        out.extend_from_slice(&0u32.to_le_bytes()); // local header offset
        out.extend_from_slice(name);
        let directory_len = out.len() - directory;
        out.extend_from_slice(b"PK\x05\x06");
        out.extend_from_slice(&[0; 4]); // disk numbers
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&u32::try_from(directory_len).unwrap().to_le_bytes());
        out.extend_from_slice(&u32::try_from(directory).unwrap().to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    /// A raw deflate stream of `repeats` MiB of `unit` repeated, made by compressing one
    /// MiB once with a full flush (byte-aligned, no back-references across it) and
    /// repeating those bytes: a 200 MiB member costs a few hundred KB and no time.
    fn deflate_repeated(prefix: &[u8], unit: &[u8], repeats: usize) -> Vec<u8> {
        use flate2::{Compress, Compression, FlushCompress};
        let mut mib = Vec::with_capacity(MIB as usize);
        while mib.len() < MIB as usize {
            mib.extend_from_slice(unit);
        }
        let block = |input: &[u8], flush: FlushCompress| {
            let mut compress = Compress::new(Compression::best(), false);
            let mut out = Vec::with_capacity(input.len() / 100 + 1024);
            compress.compress_vec(input, &mut out, flush).unwrap();
            assert_eq!(compress.total_in(), input.len() as u64);
            out
        };
        let mut out = block(prefix, FlushCompress::Full);
        let repeated = block(&mib, FlushCompress::Full);
        for _ in 0..repeats {
            out.extend_from_slice(&repeated);
        }
        out.extend_from_slice(&block(&[], FlushCompress::Finish));
        out
    }

    // --- detect -------------------------------------------------------------------------

    #[test]
    fn extract_detect_by_content_type() {
        let cases = [
            ("text/plain", Format::PlainText),
            ("text/plain; charset=utf-8", Format::PlainText),
            ("TEXT/PLAIN;charset=UTF-8", Format::PlainText),
            ("text/markdown", Format::Markdown),
            ("text/x-markdown; charset=utf-8", Format::Markdown),
            ("text/html; charset=iso-8859-1", Format::Html),
            ("application/xhtml+xml", Format::Html),
            ("application/pdf", Format::Pdf),
            (" application/PDF ", Format::Pdf),
            (
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                Format::Docx,
            ),
        ];
        for (content_type, format) in cases {
            // The content type wins over the bytes.
            assert_eq!(
                Format::detect(content_type, b"\x00\xFF"),
                Some(format),
                "{content_type}"
            );
        }
    }

    #[test]
    fn extract_detect_by_sniffing() {
        let docx = docx("<w:p><w:r><w:t>x</w:t></w:r></w:p>");
        let cases: [(&[u8], Option<Format>); 12] = [
            (b"%PDF-1.7\n...", Some(Format::Pdf)),
            (&docx, Some(Format::Docx)),
            (b"PK\x03\x04 some other zip", None),
            (b"<!DOCTYPE html><html>", Some(Format::Html)),
            (b"\xEF\xBB\xBF  \n<!doctype HTML>", Some(Format::Html)),
            (b"<HTML lang=en>", Some(Format::Html)),
            (b"<html>", Some(Format::Html)),
            (b"<htmlish>", Some(Format::PlainText)),
            (b"Just some words.\n", Some(Format::PlainText)),
            // A prefix that cuts a character in two is still text.
            (b"caf\xC3", Some(Format::PlainText)),
            (b"\xFF\xFE\x00binary", None),
            (b"text\x00with nul", None),
        ];
        for (head, format) in cases {
            assert_eq!(
                Format::detect("", head),
                format,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        // Unknown or generic content types fall back to sniffing.
        assert_eq!(
            Format::detect("application/octet-stream", b"%PDF-1.4"),
            Some(Format::Pdf)
        );
        assert_eq!(
            Format::detect("image/png", b"\x89PNG\r\n\x1a\n\x00\x00"),
            None
        );
    }

    // --- plain text and Markdown --------------------------------------------------------

    #[test]
    fn extract_plain_text_and_markdown_as_is() {
        let text = "Title\n\nSome *text*, with ünïcödé.\r\n";
        assert_eq!(extract(text.as_bytes(), Format::PlainText).unwrap(), text);
        let markdown = "# Heading\n\n- item one\n- item [two](http://x)\n";
        assert_eq!(
            extract(markdown.as_bytes(), Format::Markdown).unwrap(),
            markdown
        );
        // A byte-order mark is dropped.
        assert_eq!(
            extract(b"\xEF\xBB\xBFhello", Format::PlainText).unwrap(),
            "hello"
        );
    }

    #[test]
    fn extract_invalid_utf8_text_is_invalid() {
        assert_invalid(extract(b"caf\xE9 au lait", Format::PlainText));
        assert_invalid(extract(b"# \xFF\xFE", Format::Markdown));
    }

    // --- HTML ---------------------------------------------------------------------------

    #[test]
    fn extract_html_visible_text() {
        let html = br#"<!DOCTYPE html>
<html><head><title>Page title</title>
<style>body { color: red; }</style>
<script>var x = "<p>not text</p>"; if (a < b) {}</script>
</head>
<body>
  <h1>Main   heading</h1>
  <p>First
     paragraph with <b>bold</b> and <a href="/x">a link</a>.</p>
  <div>Line one<br>Line two</div>
  <ul><li>Apple</li><li>Pear &amp; plum</li></ul>
  <table><tr><td>a1</td><td>b1</td></tr><tr><td>a2</td><td>b2</td></tr></table>
  <pre>
  code  keeps
    spaces</pre>
  <div hidden>secret <div>nested</div> still secret</div>
  <p hidden>a hidden p whose end tag is optional is shown
  <template><p>template</p></template>
  <noscript>enable js</noscript>
  <p>Caf&eacute; &#8212; done</p>
</body></html>"#;
        let text = extract(html, Format::Html).unwrap();
        assert_eq!(
            text,
            "Main heading\n\nFirst paragraph with bold and a link.\n\nLine one\nLine two\n\n\
             Apple\nPear & plum\n\na1\tb1\na2\tb2\n\n  code  keeps\n    spaces\n\n\
             a hidden p whose end tag is optional is shown\n\nCafé — done"
        );
    }

    #[test]
    fn extract_html_tag_soup_and_invalid_utf8() {
        // Unclosed tags, stray end tags, invalid UTF-8: never an error.
        let text = extract(b"<p>one<p>two</span></div><li>thr\xFFee", Format::Html).unwrap();
        assert_eq!(text, "one\n\ntwo\nthr\u{FFFD}ee");
        assert_eq!(extract(b"", Format::Html).unwrap(), "");
        assert_eq!(extract(b"<script>never closed", Format::Html).unwrap(), "");
    }

    #[test]
    fn extract_html_deep_nesting_is_flat() {
        let mut html = "<div>".repeat(200_000);
        html.push_str("deep");
        html.push_str(&"</div>".repeat(200_000));
        assert_eq!(extract(html.as_bytes(), Format::Html).unwrap(), "deep");
    }

    // --- PDF ----------------------------------------------------------------------------

    #[test]
    fn extract_pdf_pages() {
        let bytes = text_pdf(&[
            &["Hello PDF world.", "Second line."],
            &["Page two (compressed)."],
            &["Three"],
        ]);
        let text = extract(&bytes, Format::Pdf).unwrap();
        assert_eq!(
            text,
            "Hello PDF world.\nSecond line.\n\nPage two (compressed).\n\nThree"
        );
    }

    #[test]
    fn extract_pdf_tj_arrays_and_escapes() {
        let content =
            b"BT /F1 12 Tf 72 720 Td [(Kern)-20(ed) -300 (words)] TJ T* (\\(paren\\)) Tj ET"
                .to_vec();
        let bytes = pdf(&[
            b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
            format!("<< /Type /Page /Parent 2 0 R /Resources << /Font << /F1 {FONT} >> >> /Contents 4 0 R >>")
                .into_bytes(),
            stream("", &content),
        ]);
        assert_eq!(
            extract(&bytes, Format::Pdf).unwrap(),
            "Kerned words\n(paren)"
        );
    }

    /// A PDF written by lopdf: compressed streams, one page showing "Written by lopdf".
    fn lopdf_pdf() -> Vec<u8> {
        let mut bytes = Vec::new();
        lopdf_document().save_to(&mut bytes).unwrap();
        bytes
    }

    fn lopdf_document() -> Document {
        use lopdf::content::Operation;
        use lopdf::{Stream, dictionary};
        let mut doc = Document::with_version("1.5");
        let pages_id = doc.new_object_id();
        let font_id = doc.add_object(dictionary! {
            "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Courier",
        });
        let content = Content {
            operations: vec![
                Operation::new("BT", vec![]),
                Operation::new("Tf", vec!["F1".into(), 12.into()]),
                Operation::new("Td", vec![100.into(), 600.into()]),
                Operation::new("Tj", vec![Object::string_literal("Written by lopdf")]),
                Operation::new("ET", vec![]),
            ],
        };
        let content_id = doc.add_object(Stream::new(dictionary! {}, content.encode().unwrap()));
        let page_id = doc.add_object(dictionary! {
            "Type" => "Page", "Parent" => pages_id, "Contents" => content_id,
            "Resources" => dictionary! { "Font" => dictionary! { "F1" => font_id } },
        });
        doc.objects.insert(
            pages_id,
            Object::Dictionary(
                dictionary! { "Type" => "Pages", "Kids" => vec![page_id.into()], "Count" => 1 },
            ),
        );
        let catalog_id = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
        doc.trailer.set("Root", catalog_id);
        doc.trailer.set(
            "ID",
            vec![
                Object::string_literal("0123456789abcdef"),
                Object::string_literal("0123456789abcdef"),
            ],
        );
        doc.compress();
        doc
    }

    #[test]
    fn extract_pdf_written_by_lopdf() {
        assert_eq!(
            extract(&lopdf_pdf(), Format::Pdf).unwrap(),
            "Written by lopdf"
        );
    }

    const CMAP: &str = "/CIDInit /ProcSet findresource begin 12 dict begin begincmap
/CMapName /Test def /CMapType 2 def
1 begincodespacerange <0000> <FFFF> endcodespacerange
2 beginbfchar <0001> <0048> <0002> <00E9> endbfchar
1 beginbfrange <0010> <0019> <0030> endbfrange
endcmap CMapName currentdict /CMap defineresource pop end end";

    /// A page in a Type0 font with two-byte codes, mapped to Unicode by a compressed
    /// ToUnicode CMap.
    fn cid_pdf() -> Vec<u8> {
        pdf(&[
            b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
            b"<< /Type /Page /Parent 2 0 R /Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>"
                .to_vec(),
            stream("", b"BT /F1 12 Tf <0001000200100011> Tj ET"),
            b"<< /Type /Font /Subtype /Type0 /BaseFont /Test /Encoding /Identity-H /ToUnicode 6 0 R >>"
                .to_vec(),
            stream("/Filter /FlateDecode", &deflate(CMAP.as_bytes())),
        ])
    }

    #[test]
    fn extract_pdf_to_unicode_cmap() {
        assert_eq!(extract(&cid_pdf(), Format::Pdf).unwrap(), "Hé01");
        // The CMap counts against the unpacked limit.
        let content = "BT /F1 12 Tf <0001000200100011> Tj ET".len() as u64 + 1;
        let needed = CMAP.len() as u64 + content;
        let at = ExtractLimits {
            max_unpacked_bytes: needed,
            ..limits()
        };
        assert_eq!(extract_text(&cid_pdf(), Format::Pdf, &at).unwrap(), "Hé01");
        let under = ExtractLimits {
            max_unpacked_bytes: needed - 1,
            ..limits()
        };
        assert_too_large(extract_text(&cid_pdf(), Format::Pdf, &under));
    }

    /// A lopdf PDF encrypted (RC4, 128 bits) with these passwords.
    fn encrypted_pdf(user_password: &str) -> Vec<u8> {
        use lopdf::{EncryptionState, EncryptionVersion, Permissions};
        let mut doc = lopdf_document();
        let version = EncryptionVersion::V2 {
            document: &doc,
            owner_password: "owner",
            user_password,
            key_length: 128,
            permissions: Permissions::all(),
        };
        let state = EncryptionState::try_from(version).unwrap();
        doc.encrypt(&state).unwrap();
        let mut bytes = Vec::new();
        doc.save_to(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn extract_pdf_encrypted() {
        // Only an owner password (restrictions, no password to open): readable.
        assert_eq!(
            extract(&encrypted_pdf(""), Format::Pdf).unwrap(),
            "Written by lopdf"
        );
        // A password to open it: unsupported.
        match extract(&encrypted_pdf("secret"), Format::Pdf) {
            Err(ExtractError::Unsupported(m)) => assert!(m.contains("password"), "{m}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    #[track_caller]
    fn assert_invalid_quickly(bytes: &[u8]) {
        let start = Instant::now();
        let result = extract(bytes, Format::Pdf);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "took {:?}",
            start.elapsed()
        );
        assert_invalid(result);
    }

    #[test]
    fn extract_pdf_page_tree_loops_are_invalid() {
        let page = format!(
            "<< /Type /Page /Parent 2 0 R /Resources << /Font << /F1 {FONT} >> >> /Contents 4 0 R >>"
        );
        let content = stream("", &page_content(&["text"]));
        // The Pages node lists itself as a kid.
        assert_invalid_quickly(&pdf(&[
            b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
            b"<< /Type /Pages /Kids [3 0 R 2 0 R] /Count 2 >>".to_vec(),
            page.clone().into_bytes(),
            content.clone(),
        ]));
        // Two Pages nodes list each other.
        assert_invalid_quickly(&pdf(&[
            b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
            b"<< /Type /Pages /Kids [5 0 R] /Count 1 >>".to_vec(),
            page.clone().into_bytes(),
            content.clone(),
            b"<< /Type /Pages /Parent 2 0 R /Kids [2 0 R 3 0 R] /Count 1 >>".to_vec(),
        ]));
        // A page whose Parent chain loops (font lookup walks it).
        assert_invalid_quickly(&pdf(&[
            b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 /Parent 5 0 R >>".to_vec(),
            b"<< /Type /Page /Parent 2 0 R /Contents 4 0 R >>".to_vec(),
            content.clone(),
            b"<< /Type /Pages /Parent 2 0 R /Kids [] /Count 0 >>".to_vec(),
        ]));
    }

    #[test]
    fn extract_pdf_self_referencing_objects_are_invalid() {
        // `1 0 obj 1 0 R endobj` as the catalog.
        assert_invalid_quickly(&pdf(&[b"1 0 R".to_vec()]));
        // The page tree root is a reference to itself.
        assert_invalid_quickly(&pdf(&[
            b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
            b"2 0 R".to_vec(),
        ]));
        // Two objects referring to each other.
        assert_invalid_quickly(&pdf(&[b"2 0 R".to_vec(), b"1 0 R".to_vec()]));
        // Kids that are a reference loop.
        assert_invalid_quickly(&pdf(&[
            b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
            b"<< /Type /Pages /Kids 3 0 R /Count 1 >>".to_vec(),
            b"3 0 R".to_vec(),
        ]));
    }

    #[test]
    fn extract_pdf_truncated_or_garbage_is_invalid() {
        let bytes = text_pdf(&[&["Hello"], &["World"]]);
        for cut in [bytes.len() / 3, bytes.len() / 2, bytes.len() - 10] {
            assert_invalid(extract(&bytes[..cut], Format::Pdf));
        }
        assert_invalid(extract(b"", Format::Pdf));
        assert_invalid(extract(b"%PDF-1.4\n%%EOF\n", Format::Pdf));
        assert_invalid(extract(b"this is not a PDF at all %%EOF", Format::Pdf));
        let garbage: Vec<u8> = (0..10_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut fake = b"%PDF-1.7\n".to_vec();
        fake.extend_from_slice(&garbage);
        fake.extend_from_slice(b"\n%%EOF\n");
        assert_invalid(extract(&fake, Format::Pdf));
    }

    #[test]
    fn extract_pdf_unpacked_limit() {
        let content = page_content(&["x"; 2000]);
        let bytes = text_pdf(&[&["small"], &["x"; 2000]]);
        let first = page_content(&["small"]).len() as u64;
        // The two pages' content streams, plus the newline lopdf ends each with.
        let needed = first + 1 + content.len() as u64 + 1;
        let at = ExtractLimits {
            max_unpacked_bytes: needed,
            ..limits()
        };
        assert!(
            extract_text(&bytes, Format::Pdf, &at)
                .unwrap()
                .starts_with("small\n\nx\nx")
        );
        let under = ExtractLimits {
            max_unpacked_bytes: needed - 1,
            ..limits()
        };
        assert_too_large(extract_text(&bytes, Format::Pdf, &under));
    }

    #[test]
    fn extract_pdf_bomb_is_too_large() {
        // One content stream of 200 MiB of spaces, deflated to a few hundred KB.
        let mut zlib = vec![0x78, 0xDA];
        zlib.extend_from_slice(&deflate_repeated(b"BT /F1 12 Tf (bomb) Tj ET\n", b" ", 200));
        let bytes = pdf(&[
            b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
            format!("<< /Type /Page /Parent 2 0 R /Resources << /Font << /F1 {FONT} >> >> /Contents 4 0 R >>")
                .into_bytes(),
            stream("/Filter /FlateDecode", &zlib),
        ]);
        assert!(bytes.len() < 2 * MIB as usize);
        let start = Instant::now();
        assert_too_large(extract(&bytes, Format::Pdf));
        assert!(start.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn extract_pdf_deep_nesting_fits_a_small_stack() {
        // Deeply nested arrays and dictionaries in an object and in a content stream, read
        // on a 1 MiB stack like a plugin's.
        let mut nested = "[".repeat(100_000);
        nested.push_str(&"]".repeat(100_000));
        let dicts = format!("{}{}", "<< /A ".repeat(50_000), ">>".repeat(50_000));
        let mut content = b"BT /F1 12 Tf (ok) Tj ET ".to_vec();
        content.extend_from_slice(nested.as_bytes());
        content.extend_from_slice(b" TJ");
        let bytes = pdf(&[
            b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
            format!("<< /Type /Page /Parent 2 0 R /Resources << /Font << /F1 {FONT} >> >> /Contents 4 0 R /X 5 0 R /Y 6 0 R >>")
                .into_bytes(),
            stream("", &content),
            nested.into_bytes(),
            dicts.into_bytes(),
        ]);
        // Unoptimised frames are about ten times larger (lopdf's 100 levels of nesting
        // need over 1 MiB then); optimised, the file is read in under 256 KiB.
        let stack = if cfg!(debug_assertions) {
            16 * MIB
        } else {
            MIB
        };
        let result = std::thread::Builder::new()
            .stack_size(stack as usize)
            .spawn(move || extract(&bytes, Format::Pdf).map_err(|e| e.to_string()))
            .unwrap()
            .join()
            .unwrap();
        // Whether the broken objects cost the page or not, it returns.
        assert!(
            matches!(&result, Ok(t) if t == "ok") || result.is_err(),
            "{result:?}"
        );
    }

    // --- DOCX ---------------------------------------------------------------------------

    #[test]
    fn extract_docx_paragraphs_tabs_breaks() {
        let bytes = docx(concat!(
            r#"<w:p><w:pPr><w:tabs><w:tab w:val="left" w:pos="720"/></w:tabs></w:pPr>"#,
            r#"<w:r><w:t>Hello</w:t></w:r><w:r><w:t xml:space="preserve"> world</w:t></w:r></w:p>"#,
            r#"<w:p><w:r><w:t>Name</w:t><w:tab/><w:t>Value</w:t><w:br/><w:t>next line</w:t></w:r></w:p>"#,
            r#"<w:p/>"#,
            r#"<w:p><w:r><w:t>Fish &amp; chips &#x2014; &lt;ok&gt;</w:t></w:r>"#,
            r#"<w:r><w:instrText>PAGE</w:instrText><w:delText>deleted</w:delText></w:r></w:p>"#,
            r#"<w:p><w:r><mc:AlternateContent><mc:Choice Requires="wps"><w:t>box</w:t></mc:Choice>"#,
            r#"<mc:Fallback><w:t>box copy</w:t></mc:Fallback></mc:AlternateContent></w:r></w:p>"#,
            r#"<w:tbl><w:tr><w:tc><w:p><w:r><w:t>cell</w:t></w:r></w:p></w:tc></w:tr></w:tbl>"#,
        ));
        assert_eq!(
            extract(&bytes, Format::Docx).unwrap(),
            "Hello world\nName\tValue\nnext line\n\nFish & chips — <ok>\nbox\ncell"
        );
    }

    #[test]
    fn extract_docx_without_body_is_invalid() {
        use zip::write::SimpleFileOptions;
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        zip.start_file("word/other.xml", SimpleFileOptions::default())
            .unwrap();
        zip.write_all(b"<x/>").unwrap();
        let bytes = zip.finish().unwrap().into_inner();
        assert_invalid(extract(&bytes, Format::Docx));
        // A document.xml that is not WordprocessingML, or not XML.
        assert_invalid(extract(
            &docx_with(b"<html><body>hi</body></html>", 0),
            Format::Docx,
        ));
        assert_invalid(extract(
            &docx_with(b"<w:document><w:body></w:p></w:document>", 0),
            Format::Docx,
        ));
    }

    #[test]
    fn extract_docx_truncated_or_garbage_is_invalid() {
        let bytes = docx("<w:p><w:r><w:t>Hello</w:t></w:r></w:p>");
        for cut in [0, 10, bytes.len() / 2, bytes.len() - 5] {
            assert_invalid(extract(&bytes[..cut], Format::Docx));
        }
        assert_invalid(extract(b"PK\x03\x04garbage garbage garbage", Format::Docx));
        assert_invalid(extract(b"plain words", Format::Docx));
    }

    #[test]
    fn extract_docx_zip_bomb_is_too_large() {
        // 200 MiB of XML whitespace inside a valid document, honestly declared.
        let xml_start = document_xml("<w:p><w:r><w:t>bomb</w:t></w:r></w:p>");
        let xml_start = xml_start.trim_end_matches("</w:body></w:document>");
        let compressed = deflate_repeated(xml_start.as_bytes(), b"        ", 200);
        let declared = u32::try_from(200 * MIB).unwrap();
        let honest = raw_zip(DOCX_BODY, &compressed, 0, declared);
        assert!(honest.len() < 2 * MIB as usize, "{}", honest.len());
        let start = Instant::now();
        assert_too_large(extract(&honest, Format::Docx));
        // The same data with a declared size of 1 KB: never more than the limit is read,
        // and the lie does not pass.
        let lying = raw_zip(DOCX_BODY, &compressed, 0, 1024);
        match extract(&lying, Format::Docx) {
            Err(ExtractError::TooLarge(_) | ExtractError::Invalid(_)) => {}
            other => panic!("expected an error, got {other:?}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "took {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn extract_docx_unpacked_limit() {
        let xml = document_xml("<w:p><w:r><w:t>exactly at the limit</w:t></w:r></w:p>");
        let bytes = docx_with(xml.as_bytes(), 0);
        let at = ExtractLimits {
            max_unpacked_bytes: xml.len() as u64,
            ..limits()
        };
        assert_eq!(
            extract_text(&bytes, Format::Docx, &at).unwrap(),
            "exactly at the limit"
        );
        let under = ExtractLimits {
            max_unpacked_bytes: xml.len() as u64 - 1,
            ..limits()
        };
        assert_too_large(extract_text(&bytes, Format::Docx, &under));
    }

    #[test]
    fn extract_docx_entry_limit() {
        let xml = document_xml("<w:p><w:r><w:t>many</w:t></w:r></w:p>");
        // [Content_Types].xml + document.xml + the rest.
        let at = docx_with(xml.as_bytes(), MAX_ZIP_ENTRIES - 2);
        assert_eq!(extract(&at, Format::Docx).unwrap(), "many");
        let over = docx_with(xml.as_bytes(), MAX_ZIP_ENTRIES - 1);
        assert_too_large(extract(&over, Format::Docx));
    }

    // --- limits common to all formats --------------------------------------------------

    #[test]
    fn extract_input_limit() {
        let small = ExtractLimits {
            max_input_bytes: 64,
            ..limits()
        };
        let text = "a".repeat(64);
        assert_eq!(
            extract_text(text.as_bytes(), Format::PlainText, &small).unwrap(),
            text
        );
        assert_too_large(extract_text(
            format!("{text}a").as_bytes(),
            Format::PlainText,
            &small,
        ));
        // Checked before parsing: garbage over the limit is TooLarge, not Invalid.
        let garbage = vec![0xFFu8; 65];
        for format in [Format::Markdown, Format::Html, Format::Pdf, Format::Docx] {
            assert_too_large(extract_text(&garbage, format, &small));
        }
        let pdf = text_pdf(&[&["Hello"]]);
        let exact = ExtractLimits {
            max_input_bytes: pdf.len(),
            ..limits()
        };
        assert_eq!(extract_text(&pdf, Format::Pdf, &exact).unwrap(), "Hello");
        let under = ExtractLimits {
            max_input_bytes: pdf.len() - 1,
            ..limits()
        };
        assert_too_large(extract_text(&pdf, Format::Pdf, &under));
        // The default: 16 MiB.
        let big = vec![b'a'; 16 * MIB as usize + 1];
        assert_too_large(extract(&big, Format::PlainText));
    }

    #[test]
    fn extract_text_limit() {
        let cases: [(Vec<u8>, Format, &str); 5] = [
            (b"0123456789".to_vec(), Format::PlainText, "0123456789"),
            (b"# 45678 9".to_vec(), Format::Markdown, "# 45678 9"),
            (
                b"<p>01234</p><p>56</p>".to_vec(),
                Format::Html,
                "01234\n\n56",
            ),
            (
                text_pdf(&[&["0123"], &["4567"]]),
                Format::Pdf,
                "0123\n\n4567",
            ),
            (
                docx("<w:p><w:r><w:t>01234</w:t></w:r></w:p><w:p><w:r><w:t>678</w:t></w:r></w:p>"),
                Format::Docx,
                "01234\n678",
            ),
        ];
        for (bytes, format, expected) in cases {
            let at = ExtractLimits {
                max_text_bytes: expected.len(),
                ..limits()
            };
            assert_eq!(
                extract_text(&bytes, format, &at).unwrap(),
                expected,
                "{format:?}"
            );
            let under = ExtractLimits {
                max_text_bytes: expected.len() - 1,
                ..limits()
            };
            assert_too_large(extract_text(&bytes, format, &under));
        }
    }

    #[test]
    fn extract_limits_default() {
        let limits = ExtractLimits::default();
        assert_eq!(limits.max_input_bytes, 16 << 20);
        assert_eq!(limits.max_text_bytes, 4 << 20);
        assert_eq!(limits.max_unpacked_bytes, 64 << 20);
    }

    #[test]
    fn extract_error_messages_name_format_and_limit() {
        let small = ExtractLimits {
            max_input_bytes: 10 * MIB as usize,
            ..limits()
        };
        let big = vec![b'a'; 10 * MIB as usize + 512 * KIB as usize];
        let message = extract_text(&big, Format::Pdf, &small)
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "document too large: the PDF file is 10.5 MiB, over the 10 MiB limit for uploaded files"
        );
        let message = extract(b"\xFF", Format::PlainText).unwrap_err().to_string();
        assert_eq!(
            message,
            "invalid document: the plain-text file is not valid UTF-8 (the first bad byte is at offset 0)"
        );
        let tight = ExtractLimits {
            max_text_bytes: 3,
            ..limits()
        };
        let message = extract_text(b"<p>long</p>", Format::Html, &tight)
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "document too large: the text of the HTML file is over the 3 bytes limit for extracted text"
        );
        let tight = ExtractLimits {
            max_unpacked_bytes: 10,
            ..limits()
        };
        let message = extract_text(&docx(""), Format::Docx, &tight)
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "document too large: word/document.xml in the DOCX file unpacks to more than the 10 bytes limit"
        );
    }

    /// Rounds per fixture of the mutation test; `EXTRACT_FUZZ_ROUNDS` raises it for a
    /// longer run (`cargo test --release`).
    fn fuzz_rounds() -> usize {
        std::env::var("EXTRACT_FUZZ_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(400)
    }

    /// Damaged copies of every fixture (bytes flipped, cut, spliced) return, one way or
    /// the other, without panicking.
    #[test]
    fn extract_mutated_inputs_never_panic() {
        let fixtures = [
            (text_pdf(&[&["Hello", "World"], &["Two"]]), Format::Pdf),
            (lopdf_pdf(), Format::Pdf),
            (cid_pdf(), Format::Pdf),
            (encrypted_pdf(""), Format::Pdf),
            (
                docx("<w:p><w:r><w:t>Hello</w:t><w:tab/><w:br/></w:r></w:p>"),
                Format::Docx,
            ),
            (
                b"<html><body><p>x</p><script>y</script><pre>z</pre></body></html>".to_vec(),
                Format::Html,
            ),
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (original, format) in &fixtures {
            for round in 0..fuzz_rounds() {
                let mut bytes = original.clone();
                let len = bytes.len() as u64;
                match round % 5 {
                    0 => {
                        for _ in 0..1 + next() % 8 {
                            let at = (next() % len) as usize;
                            bytes[at] = next() as u8;
                        }
                    }
                    1 => bytes.truncate((next() % len) as usize),
                    2 => {
                        let at = (next() % len) as usize;
                        let from = (next() % len) as usize;
                        let piece: Vec<u8> =
                            original[from..(from + 64).min(original.len())].to_vec();
                        bytes.splice(at..at, piece);
                    }
                    3 => {
                        let at = (next() % len) as usize;
                        let to = (at + (next() % 32) as usize).min(bytes.len());
                        bytes.drain(at..to);
                    }
                    _ => {
                        // Another digit: object numbers, lengths and offsets go astray,
                        // references now point anywhere (loops included).
                        let digits: Vec<usize> = (0..bytes.len())
                            .filter(|&i| bytes[i].is_ascii_digit())
                            .collect();
                        for _ in 0..1 + next() % 3 {
                            if let Some(&at) =
                                digits.get((next() % digits.len().max(1) as u64) as usize)
                            {
                                bytes[at] = b'0' + (next() % 10) as u8;
                            }
                        }
                    }
                }
                let _ = extract(&bytes, *format);
            }
        }
    }
}
