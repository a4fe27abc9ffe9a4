//! Tokens of the language. The lexer only splits; the parser decides what an
//! identifier is (path segment, editor, converter or enum) from its case and
//! what follows it.

use logos::Logos;

#[derive(Logos, Debug, Clone, Copy, PartialEq, Eq)]
#[logos(skip r"[ \t\r\n\f]+")]
pub(crate) enum Tok {
    #[token("(")]
    LParen,
    #[token(")")]
    RParen,
    #[token("[")]
    LBracket,
    #[token("]")]
    RBracket,
    #[token("{")]
    LBrace,
    #[token("}")]
    RBrace,
    #[token(",")]
    Comma,
    #[token(".")]
    Dot,
    #[token(":")]
    Colon,
    #[token("==")]
    Eq,
    #[token("!=")]
    Ne,
    #[token("<=")]
    Le,
    #[token(">=")]
    Ge,
    #[token("<")]
    Lt,
    #[token(">")]
    Gt,
    #[token("+")]
    Plus,
    #[token("-")]
    Minus,
    #[token("*")]
    Star,
    #[token("/")]
    Slash,
    #[token("where")]
    Where,
    #[token("and")]
    And,
    #[token("or")]
    Or,
    #[token("not")]
    Not,
    #[token("true")]
    True,
    #[token("false")]
    False,
    #[token("nil")]
    Nil,
    #[regex(r#""([^"\\]|\\.)*""#)]
    Str,
    #[regex("0x[0-9a-fA-F]*")]
    Bytes,
    #[regex("[0-9]+")]
    Int,
    #[regex(r"[0-9]*\.[0-9]+([eE][-+]?[0-9]+)?")]
    Float,
    #[regex("[A-Za-z_][A-Za-z0-9_]*")]
    Ident,
}

impl Tok {
    /// How an error message names the token.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Tok::LParen => "'('",
            Tok::RParen => "')'",
            Tok::LBracket => "'['",
            Tok::RBracket => "']'",
            Tok::LBrace => "'{'",
            Tok::RBrace => "'}'",
            Tok::Comma => "','",
            Tok::Dot => "'.'",
            Tok::Colon => "':'",
            Tok::Eq => "'=='",
            Tok::Ne => "'!='",
            Tok::Le => "'<='",
            Tok::Ge => "'>='",
            Tok::Lt => "'<'",
            Tok::Gt => "'>'",
            Tok::Plus => "'+'",
            Tok::Minus => "'-'",
            Tok::Star => "'*'",
            Tok::Slash => "'/'",
            Tok::Where => "'where'",
            Tok::And => "'and'",
            Tok::Or => "'or'",
            Tok::Not => "'not'",
            Tok::True | Tok::False => "boolean",
            Tok::Nil => "nil",
            Tok::Str => "string",
            Tok::Bytes => "bytes",
            Tok::Int => "integer",
            Tok::Float => "float",
            Tok::Ident => "identifier",
        }
    }
}

/// One token and where it starts and ends in the source (bytes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Token {
    pub tok: Tok,
    pub start: usize,
    pub end: usize,
}

/// Splits `source` into tokens; on a character no token starts with, the
/// byte offset of that character.
pub(crate) fn tokenize(source: &str) -> Result<Vec<Token>, usize> {
    let mut lexer = Tok::lexer(source);
    let mut out = Vec::new();
    while let Some(next) = lexer.next() {
        let span = lexer.span();
        match next {
            Ok(tok) => out.push(Token {
                tok,
                start: span.start,
                end: span.end,
            }),
            Err(()) => return Err(span.start),
        }
    }
    Ok(out)
}

/// The 1-based column (in characters) of byte offset `offset`.
pub(crate) fn column(source: &str, offset: usize) -> usize {
    let offset = offset.min(source.len());
    source
        .char_indices()
        .take_while(|(i, _)| *i < offset)
        .count()
        + 1
}

/// The text of a string literal without its quotes and with its escapes
/// resolved; on a bad escape, its byte offset within the literal.
pub(crate) fn unquote(literal: &str) -> Result<String, usize> {
    let inner = literal
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(literal);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.char_indices();
    while let Some((_, c)) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some((_, '"')) => out.push('"'),
            Some((_, '\\')) => out.push('\\'),
            Some((_, 'n')) => out.push('\n'),
            Some((_, 't')) => out.push('\t'),
            Some((_, 'r')) => out.push('\r'),
            Some((i, _)) => return Err(i),
            None => return Err(inner.len()),
        }
    }
    Ok(out)
}
