//! Recursive-descent parser. One expression grammar covers values and
//! boolean expressions; the compiler then checks each is used where its
//! type fits. Precedence, loosest first: `or`, `and`, `not`, comparison,
//! `+ -`, `* /`, unary `-`.

use crate::ast::{ArithOp, Call, CmpOp, Expr, Key, Node, Path, Statement};
use crate::error::Located;
use crate::lexer::{self, Tok, Token};

/// Deeper trees than this are refused: parsing, compiling, running and
/// dropping all recurse once per level, and untrusted configuration must
/// not overflow the stack. Parentheses, lists, maps, calls, `not`, unary
/// minus and each chained binary operator (`a + b + c` is two levels)
/// count.
pub(crate) const MAX_DEPTH: usize = 100;

type PResult<T> = Result<T, Located>;

struct Parser<'s> {
    source: &'s str,
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
}

/// Parses `editor(args) [where condition]`.
pub(crate) fn parse_statement(source: &str) -> PResult<Statement> {
    let mut p = Parser::new(source)?;
    let start = p.offset();
    let name_tok = p.expect(Tok::Ident, "an editor name")?;
    let name = p.text(name_tok).to_owned();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(Located::new(
            name_tok.start,
            format!("expected an editor (lower-case name), found '{name}'"),
        ));
    }
    p.expect(Tok::LParen, "'(' after the editor name")?;
    let args = p.args()?;
    let condition = if p.eat(Tok::Where) {
        Some(p.expr()?)
    } else {
        None
    };
    p.end()?;
    Ok(Statement {
        editor: Call {
            name,
            args,
            keys: Vec::new(),
        },
        editor_pos: start,
        condition,
    })
}

/// Parses a boolean expression on its own (filter and routing conditions).
pub(crate) fn parse_condition(source: &str) -> PResult<Node> {
    let mut p = Parser::new(source)?;
    let node = p.expr()?;
    p.end()?;
    Ok(node)
}

impl<'s> Parser<'s> {
    fn new(source: &'s str) -> PResult<Self> {
        let tokens = lexer::tokenize(source)
            .map_err(|offset| Located::new(offset, "unexpected character"))?;
        Ok(Parser {
            source,
            tokens,
            at: 0,
            depth: 0,
        })
    }

    fn peek(&self) -> Option<Token> {
        self.tokens.get(self.at).copied()
    }

    fn peek_tok(&self) -> Option<Tok> {
        self.peek().map(|t| t.tok)
    }

    /// Where the next token starts (the end of the source at the end).
    fn offset(&self) -> usize {
        self.peek().map_or(self.source.len(), |t| t.start)
    }

    fn text(&self, t: Token) -> &'s str {
        &self.source[t.start..t.end]
    }

    fn bump(&mut self) -> Option<Token> {
        let t = self.peek()?;
        self.at += 1;
        Some(t)
    }

    fn eat(&mut self, tok: Tok) -> bool {
        if self.peek_tok() == Some(tok) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn unexpected(&self, wanted: &str) -> Located {
        let found = match self.peek() {
            Some(t) => format!("{} '{}'", t.tok.describe(), self.text(t)),
            None => "end of input".to_owned(),
        };
        Located::new(self.offset(), format!("expected {wanted}, found {found}"))
    }

    fn expect(&mut self, tok: Tok, wanted: &str) -> PResult<Token> {
        match self.peek() {
            Some(t) if t.tok == tok => {
                self.at += 1;
                Ok(t)
            }
            _ => Err(self.unexpected(wanted)),
        }
    }

    fn end(&self) -> PResult<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.unexpected("end of statement")),
        }
    }

    /// Enters one nesting level; every recursive production calls it.
    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Located::new(
                self.offset(),
                format!("expression nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn expr(&mut self) -> PResult<Node> {
        self.enter()?;
        let out = self.or();
        self.leave();
        out
    }

    fn or(&mut self) -> PResult<Node> {
        let mut left = self.and()?;
        let mut chained = 0;
        while self.eat(Tok::Or) {
            self.enter()?;
            chained += 1;
            let right = self.and()?;
            let pos = left.pos;
            left = Node {
                expr: Expr::Or(Box::new(left), Box::new(right)),
                pos,
            };
        }
        self.depth -= chained;
        Ok(left)
    }

    fn and(&mut self) -> PResult<Node> {
        let mut left = self.not()?;
        let mut chained = 0;
        while self.eat(Tok::And) {
            self.enter()?;
            chained += 1;
            let right = self.not()?;
            let pos = left.pos;
            left = Node {
                expr: Expr::And(Box::new(left), Box::new(right)),
                pos,
            };
        }
        self.depth -= chained;
        Ok(left)
    }

    fn not(&mut self) -> PResult<Node> {
        let pos = self.offset();
        if self.eat(Tok::Not) {
            self.enter()?;
            let inner = self.not();
            self.leave();
            return Ok(Node {
                expr: Expr::Not(Box::new(inner?)),
                pos,
            });
        }
        self.comparison()
    }

    fn comparison(&mut self) -> PResult<Node> {
        let left = self.additive()?;
        let op = match self.peek_tok() {
            Some(Tok::Eq) => CmpOp::Eq,
            Some(Tok::Ne) => CmpOp::Ne,
            Some(Tok::Lt) => CmpOp::Lt,
            Some(Tok::Le) => CmpOp::Le,
            Some(Tok::Gt) => CmpOp::Gt,
            Some(Tok::Ge) => CmpOp::Ge,
            _ => return Ok(left),
        };
        self.at += 1;
        let right = self.additive()?;
        let pos = left.pos;
        Ok(Node {
            expr: Expr::Cmp(op, Box::new(left), Box::new(right)),
            pos,
        })
    }

    fn additive(&mut self) -> PResult<Node> {
        let mut left = self.multiplicative()?;
        let mut chained = 0;
        loop {
            let op = match self.peek_tok() {
                Some(Tok::Plus) => ArithOp::Add,
                Some(Tok::Minus) => ArithOp::Sub,
                _ => break,
            };
            self.at += 1;
            self.enter()?;
            chained += 1;
            let right = self.multiplicative()?;
            let pos = left.pos;
            left = Node {
                expr: Expr::Arith(op, Box::new(left), Box::new(right)),
                pos,
            };
        }
        self.depth -= chained;
        Ok(left)
    }

    fn multiplicative(&mut self) -> PResult<Node> {
        let mut left = self.unary()?;
        let mut chained = 0;
        loop {
            let op = match self.peek_tok() {
                Some(Tok::Star) => ArithOp::Mul,
                Some(Tok::Slash) => ArithOp::Div,
                _ => break,
            };
            self.at += 1;
            self.enter()?;
            chained += 1;
            let right = self.unary()?;
            let pos = left.pos;
            left = Node {
                expr: Expr::Arith(op, Box::new(left), Box::new(right)),
                pos,
            };
        }
        self.depth -= chained;
        Ok(left)
    }

    fn unary(&mut self) -> PResult<Node> {
        let pos = self.offset();
        if !self.eat(Tok::Minus) {
            return self.primary();
        }
        // A negative number literal is folded here so that i64::MIN, whose
        // magnitude is not an i64, still parses.
        match self.peek() {
            Some(t) if t.tok == Tok::Int => {
                self.at += 1;
                let digits = self.text(t);
                let v = format!("-{digits}")
                    .parse::<i64>()
                    .map_err(|_| Located::new(pos, "integer out of range"))?;
                Ok(Node {
                    expr: Expr::Int(v),
                    pos,
                })
            }
            Some(t) if t.tok == Tok::Float => {
                self.at += 1;
                let v = parse_float(self.text(t), t.start)?;
                Ok(Node {
                    expr: Expr::Float(-v),
                    pos,
                })
            }
            _ => {
                self.enter()?;
                let inner = self.unary();
                self.leave();
                Ok(Node {
                    expr: Expr::Neg(Box::new(inner?)),
                    pos,
                })
            }
        }
    }

    fn primary(&mut self) -> PResult<Node> {
        let pos = self.offset();
        let Some(t) = self.bump() else {
            return Err(self.unexpected("a value"));
        };
        let expr = match t.tok {
            Tok::Nil => Expr::Nil,
            Tok::True => Expr::Bool(true),
            Tok::False => Expr::Bool(false),
            Tok::Int => Expr::Int(
                self.text(t)
                    .parse::<i64>()
                    .map_err(|_| Located::new(pos, "integer out of range"))?,
            ),
            Tok::Float => Expr::Float(parse_float(self.text(t), pos)?),
            Tok::Str => Expr::Str(
                lexer::unquote(self.text(t))
                    .map_err(|i| Located::new(pos + i, "unknown escape sequence in string"))?,
            ),
            Tok::Bytes => Expr::Bytes(parse_bytes(self.text(t), pos)?),
            Tok::LParen => {
                let inner = self.expr()?;
                self.expect(Tok::RParen, "')'")?;
                return Ok(Node {
                    expr: inner.expr,
                    pos,
                });
            }
            Tok::LBracket => {
                self.enter()?;
                let items = self.list_items();
                self.leave();
                Expr::List(items?)
            }
            Tok::LBrace => {
                self.enter()?;
                let items = self.map_items();
                self.leave();
                Expr::Map(items?)
            }
            Tok::Ident => return self.identifier(t),
            _ => {
                self.at -= 1;
                return Err(self.unexpected("a value"));
            }
        };
        Ok(Node { expr, pos })
    }

    /// After an identifier: a call, a path, or an upper-case enum/function
    /// name.
    fn identifier(&mut self, t: Token) -> PResult<Node> {
        let pos = t.start;
        let name = self.text(t).to_owned();
        let upper = name.starts_with(|c: char| c.is_ascii_uppercase());
        if self.peek_tok() == Some(Tok::LParen) {
            if !upper {
                return Err(Located::new(
                    pos,
                    format!(
                        "editor '{name}' cannot be used as a value; converters start with an upper-case letter"
                    ),
                ));
            }
            self.at += 1;
            self.enter()?;
            let args = self.args();
            self.leave();
            let args = args?;
            let keys = self.keys()?;
            return Ok(Node {
                expr: Expr::Call(Call { name, args, keys }),
                pos,
            });
        }
        if upper {
            return Ok(Node {
                expr: Expr::Ident(name),
                pos,
            });
        }
        let mut segments = vec![name];
        while self.peek_tok() == Some(Tok::Dot) {
            self.at += 1;
            let seg = self.expect(Tok::Ident, "a field name after '.'")?;
            segments.push(self.text(seg).to_owned());
        }
        let keys = self.keys()?;
        Ok(Node {
            expr: Expr::Path(Path { segments, keys }),
            pos,
        })
    }

    /// `["k"][0]…` after a path or call.
    fn keys(&mut self) -> PResult<Vec<Key>> {
        let mut keys = Vec::new();
        while self.eat(Tok::LBracket) {
            let pos = self.offset();
            let key =
                match self.peek() {
                    Some(t) if t.tok == Tok::Str => {
                        self.at += 1;
                        Key::Str(lexer::unquote(self.text(t)).map_err(|i| {
                            Located::new(pos + i, "unknown escape sequence in string")
                        })?)
                    }
                    Some(t) if t.tok == Tok::Int => {
                        self.at += 1;
                        Key::Int(
                            self.text(t)
                                .parse()
                                .map_err(|_| Located::new(pos, "index out of range"))?,
                        )
                    }
                    _ => return Err(self.unexpected("a string key or an integer index")),
                };
            self.expect(Tok::RBracket, "']'")?;
            keys.push(key);
        }
        Ok(keys)
    }

    /// Arguments after `(`, through `)`.
    fn args(&mut self) -> PResult<Vec<Node>> {
        let mut args = Vec::new();
        if self.eat(Tok::RParen) {
            return Ok(args);
        }
        loop {
            args.push(self.expr()?);
            if self.eat(Tok::RParen) {
                return Ok(args);
            }
            self.expect(Tok::Comma, "',' or ')'")?;
        }
    }

    fn list_items(&mut self) -> PResult<Vec<Node>> {
        let mut items = Vec::new();
        if self.eat(Tok::RBracket) {
            return Ok(items);
        }
        loop {
            items.push(self.expr()?);
            if self.eat(Tok::RBracket) {
                return Ok(items);
            }
            self.expect(Tok::Comma, "',' or ']'")?;
        }
    }

    fn map_items(&mut self) -> PResult<Vec<(String, Node)>> {
        let mut items = Vec::new();
        if self.eat(Tok::RBrace) {
            return Ok(items);
        }
        loop {
            let key_tok = self.expect(Tok::Str, "a string map key")?;
            let key = lexer::unquote(self.text(key_tok)).map_err(|i| {
                Located::new(key_tok.start + i, "unknown escape sequence in string")
            })?;
            self.expect(Tok::Colon, "':'")?;
            items.push((key, self.expr()?));
            if self.eat(Tok::RBrace) {
                return Ok(items);
            }
            self.expect(Tok::Comma, "',' or '}'")?;
        }
    }
}

fn parse_float(text: &str, pos: usize) -> PResult<f64> {
    text.parse::<f64>()
        .map_err(|_| Located::new(pos, "invalid float"))
}

fn parse_bytes(text: &str, pos: usize) -> PResult<Vec<u8>> {
    let hex = &text[2..];
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return Err(Located::new(
            pos,
            "byte literal needs an even, non-zero number of hex digits",
        ));
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).map_err(|_| Located::new(pos, "invalid bytes"))?;
            u8::from_str_radix(s, 16).map_err(|_| Located::new(pos, "invalid bytes"))
        })
        .collect()
}
