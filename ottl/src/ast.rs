//! What the parser produces: the source's structure with byte offsets, before
//! names are resolved against a context and the function table.

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub expr: Expr,
    /// Byte offset of the node's first token, for error columns.
    pub pos: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Node>),
    Map(Vec<(String, Node)>),
    /// An upper-case identifier not followed by `(`: an enum or, as an
    /// argument, a function name.
    Ident(String),
    Path(Path),
    Call(Call),
    Neg(Box<Node>),
    Arith(ArithOp, Box<Node>, Box<Node>),
    Cmp(CmpOp, Box<Node>, Box<Node>),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Key {
    Str(String),
    Int(i64),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Path {
    /// `resource.attributes` is `["resource", "attributes"]`.
    pub segments: Vec<String>,
    pub keys: Vec<Key>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Call {
    pub name: String,
    pub args: Vec<Node>,
    /// Indexes applied to a converter's result: `Split(x, ",")[0]`.
    pub keys: Vec<Key>,
}

/// `editor(args…) [where condition]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Statement {
    pub editor: Call,
    pub editor_pos: usize,
    pub condition: Option<Node>,
}

impl Node {
    /// Calls `f` on every path in the tree (context inference).
    pub(crate) fn visit_paths<'a>(&'a self, f: &mut impl FnMut(&'a Path)) {
        match &self.expr {
            Expr::Path(p) => f(p),
            Expr::List(items) => items.iter().for_each(|n| n.visit_paths(f)),
            Expr::Map(items) => items.iter().for_each(|(_, n)| n.visit_paths(f)),
            Expr::Call(c) => c.args.iter().for_each(|n| n.visit_paths(f)),
            Expr::Neg(n) | Expr::Not(n) => n.visit_paths(f),
            Expr::Arith(_, a, b) | Expr::Cmp(_, a, b) | Expr::And(a, b) | Expr::Or(a, b) => {
                a.visit_paths(f);
                b.visit_paths(f);
            }
            _ => {}
        }
    }
}
