//! The grammar: every element, precedence, and errors with their columns.

use crate::ast::{ArithOp, CmpOp, Expr, Key, Node, Path};
use crate::parser::{MAX_DEPTH, parse_condition, parse_statement};
use crate::tests::helpers::load_error;
use crate::{Condition, Context};

fn cond(src: &str) -> Expr {
    match parse_condition(src) {
        Ok(n) => n.expr,
        Err(e) => panic!("{src}: {e:?}"),
    }
}

fn b(e: &Node) -> &Expr {
    &e.expr
}

#[test]
fn literals() {
    assert_eq!(cond("nil"), Expr::Nil);
    assert_eq!(cond("true"), Expr::Bool(true));
    assert_eq!(cond("false"), Expr::Bool(false));
    assert_eq!(cond("42"), Expr::Int(42));
    assert_eq!(cond("-42"), Expr::Int(-42));
    assert_eq!(cond("-9223372036854775808"), Expr::Int(i64::MIN));
    assert_eq!(cond("1.5"), Expr::Float(1.5));
    assert_eq!(cond(".5"), Expr::Float(0.5));
    assert_eq!(cond("-2.5e3"), Expr::Float(-2500.0));
    assert_eq!(
        cond("0xdeadBEEF"),
        Expr::Bytes(vec![0xde, 0xad, 0xbe, 0xef])
    );
    assert_eq!(
        cond(r#""a\"b\\c\nd\te""#),
        Expr::Str("a\"b\\c\nd\te".into())
    );
    assert_eq!(
        cond("SPAN_KIND_SERVER"),
        Expr::Ident("SPAN_KIND_SERVER".into())
    );
}

#[test]
fn lists_and_maps() {
    let Expr::List(items) = cond(r#"[1, "a", [true], {}]"#) else {
        panic!()
    };
    assert_eq!(items.len(), 4);
    assert_eq!(
        b(&items[2]),
        &Expr::List(vec![Node {
            expr: Expr::Bool(true),
            pos: 10
        }])
    );
    assert_eq!(cond("[]"), Expr::List(vec![]));
    let Expr::Map(items) = cond(r#"{"a": 1, "b": {"c": nil}}"#) else {
        panic!()
    };
    assert_eq!(items[0].0, "a");
    assert!(matches!(&items[1].1.expr, Expr::Map(inner) if inner[0].0 == "c"));
}

#[test]
fn paths_and_keys() {
    assert_eq!(
        cond(r#"resource.attributes["k"]["n"][0]"#),
        Expr::Path(Path {
            segments: vec!["resource".into(), "attributes".into()],
            keys: vec![Key::Str("k".into()), Key::Str("n".into()), Key::Int(0)],
        })
    );
    assert_eq!(
        cond("status.code"),
        Expr::Path(Path {
            segments: vec!["status".into(), "code".into()],
            keys: vec![],
        })
    );
}

#[test]
fn calls() {
    let Expr::Call(c) = cond(r#"Concat([name, "x"], "-")[0]"#) else {
        panic!()
    };
    assert_eq!(c.name, "Concat");
    assert_eq!(c.args.len(), 2);
    assert_eq!(c.keys, vec![Key::Int(0)]);
    let st = parse_statement(r#"set(attributes["a"], Int("1")) where name == "x""#).unwrap();
    assert_eq!(st.editor.name, "set");
    assert!(st.condition.is_some());
    assert!(
        parse_statement("delete_key(attributes, \"a\")")
            .unwrap()
            .condition
            .is_none()
    );
}

#[test]
fn arithmetic_precedence() {
    // 1 + 2 * 3 groups as 1 + (2 * 3).
    let Expr::Arith(ArithOp::Add, l, r) = cond("1 + 2 * 3") else {
        panic!()
    };
    assert_eq!(l.expr, Expr::Int(1));
    assert!(matches!(r.expr, Expr::Arith(ArithOp::Mul, _, _)));
    // Parentheses override; subtraction is left-associative.
    assert!(matches!(
        cond("(1 + 2) * 3"),
        Expr::Arith(ArithOp::Mul, _, _)
    ));
    let Expr::Arith(ArithOp::Sub, l, _) = cond("10 - 4 - 3") else {
        panic!()
    };
    assert!(matches!(l.expr, Expr::Arith(ArithOp::Sub, _, _)));
    assert!(matches!(cond("-(1)"), Expr::Neg(_)));
}

#[test]
fn boolean_precedence() {
    // a or b and c groups as a or (b and c); not binds tighter than and.
    let Expr::Or(_, r) = cond("true or false and true") else {
        panic!()
    };
    assert!(matches!(r.expr, Expr::And(_, _)));
    let Expr::And(l, _) = cond("not true and false") else {
        panic!()
    };
    assert!(matches!(l.expr, Expr::Not(_)));
    // Comparison binds tighter than not, arithmetic tighter than comparison.
    let Expr::Not(inner) = cond("not 1 + 1 == 2") else {
        panic!()
    };
    let Expr::Cmp(CmpOp::Eq, l, _) = &inner.expr else {
        panic!()
    };
    assert!(matches!(l.expr, Expr::Arith(ArithOp::Add, _, _)));
    for (src, op) in [
        ("1 != 2", CmpOp::Ne),
        ("1 < 2", CmpOp::Lt),
        ("1 <= 2", CmpOp::Le),
        ("1 > 2", CmpOp::Gt),
        ("1 >= 2", CmpOp::Ge),
    ] {
        assert!(matches!(cond(src), Expr::Cmp(o, _, _) if o == op), "{src}");
    }
    assert!(matches!(cond("(true or false) and true"), Expr::And(_, _)));
}

/// Each malformed statement fails with the column of the culprit.
#[test]
fn errors_name_statement_and_column() {
    let cases: &[(&str, usize, &str)] = &[
        (r#"set(attributes["a"], 1"#, 23, "expected ',' or ')'"),
        (r#"set(attributes["a"] 1)"#, 21, "expected ',' or ')'"),
        (r#"set(attributes["a"], 1) where"#, 30, "expected a value"),
        (
            r#"set(attributes["a"], 1) extra"#,
            25,
            "expected end of statement",
        ),
        (r#"set(attributes["a"], $)"#, 22, "unexpected character"),
        (r#"Set(attributes["a"], 1)"#, 1, "expected an editor"),
        (r#"set(attributes["a"], "x\q")"#, 24, "unknown escape"),
        (
            r#"set(attributes["a"], Concat(attributes["l"], ""))"#,
            29,
            "Concat takes a list",
        ),
        (
            r#"set(attributes[1.5], 1)"#,
            16,
            "a string key or an integer index",
        ),
        (r#"set(attributes["a"], 0xabc)"#, 22, "even"),
        (
            r#"set(attributes["a"], 99999999999999999999)"#,
            22,
            "out of range",
        ),
        (r#"set(nosuch, 1)"#, 5, "unknown path 'nosuch'"),
        (
            r#"set(attributes["a"], SHA256(1))"#,
            29,
            "expected a string, found an int",
        ),
        (
            r#"set(attributes["a"], Nope(1))"#,
            22,
            "unknown converter 'Nope'",
        ),
        (r#"frob(attributes)"#, 1, "unknown editor 'frob'"),
        (r#"set(attributes["a"])"#, 1, "set takes 2 arguments, got 1"),
        (
            r#"set(attributes["a"], 1) where 1"#,
            31,
            "expected a boolean expression",
        ),
        (
            r#"set(attributes["a"], 1 == 1)"#,
            22,
            "only allowed as a condition",
        ),
        (
            r#"set(attributes["a"], "a" + 1)"#,
            22,
            "arithmetic takes ints and floats",
        ),
        (r#"set(attributes["a"], 1 / 0)"#, 22, "division by zero"),
        (r#"set(attributes["a"], NOT_AN_ENUM)"#, 22, "unknown enum"),
        (
            r#"set(attributes["a"], delete_key(attributes, "x"))"#,
            22,
            "cannot be used as a value",
        ),
        (r#"set(name["x"], 1)"#, 5, "cannot be indexed"),
        (
            r#"set(metric.name, 1)"#,
            5,
            "not reachable from the span context",
        ),
        (
            r#"keep_keys(attributes, "a")"#,
            23,
            "list of string literals",
        ),
        (r#"replace_pattern(name, "(", "x")"#, 23, "invalid regex"),
        (
            r#"replace_pattern(name, "a", "x", Frob)"#,
            33,
            "cannot be applied",
        ),
        (
            r#"replace_pattern(name, "a", "x", SHA256, "%d%s")"#,
            41,
            "exactly one %s",
        ),
        (
            r#"replace_all_patterns(attributes, "both", "a", "b")"#,
            34,
            "\"key\" or \"value\"",
        ),
        (
            r#"merge_maps(attributes, {"a": 1}, "overwrite")"#,
            34,
            "strategy",
        ),
        (r#"limit(attributes, -1)"#, 19, "must not be negative"),
        (
            r#"limit(attributes, 1, ["a", "b"])"#,
            22,
            "more priority keys",
        ),
        (r#"truncate_all(attributes, "1")"#, 26, "integer literal"),
        (
            r#"set(attributes["é"], 1) and"#,
            25,
            "expected end of statement",
        ),
    ];
    for (src, column, message) in cases {
        let e = load_error(src, Context::Span);
        assert_eq!(e.column, *column, "{src}: {e}");
        assert!(e.message.contains(message), "{src}: {e}");
        assert_eq!(e.index, 1);
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("statement 1 (`{src}`): column {column}: ")),
            "{text}"
        );
    }
}

#[test]
fn error_names_its_position_in_the_list() {
    let config = crate::TransformConfig {
        trace_statements: vec![crate::ContextStatements {
            context: Context::Span,
            conditions: vec![],
            statements: vec![
                r#"set(attributes["a"], 1)"#.into(),
                r#"delete_key(attributes, "b")"#.into(),
                r#"set(attributes["c"], 1) where attributes["d"] =="#.into(),
            ],
        }],
        ..Default::default()
    };
    let Err(e) = crate::Transform::new(&config) else {
        panic!()
    };
    assert_eq!(e.index, 3);
    assert_eq!(e.column, 49);
    assert!(e.to_string().starts_with("statement 3 ("), "{e}");
}

#[test]
fn nesting_is_bounded() {
    let deep = format!(
        "{}1{}",
        "(".repeat(MAX_DEPTH + 1),
        ")".repeat(MAX_DEPTH + 1)
    );
    let e = parse_condition(&format!("{deep} == 1")).unwrap_err();
    assert!(e.message.contains("nested deeper"), "{e:?}");
    // Far deeper input fails the same way, without exhausting the stack.
    for opener in ["(", "[", "not ", "-", "Int("] {
        let src = opener.repeat(100_000);
        let e = parse_condition(&src).unwrap_err();
        assert!(e.message.contains("nested deeper"), "{opener}: {e:?}");
    }
    let ok = format!("{}1{} == 1", "(".repeat(20), ")".repeat(20));
    assert!(Condition::new(&ok, Context::Span).is_ok());
}

#[test]
fn malformed_input_never_panics() {
    let samples = [
        "",
        " ",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ",",
        "\"",
        "\"\\",
        "0x",
        "-",
        "--1",
        "set(",
        "set()",
        "set(,)",
        "where",
        "and or",
        "a.",
        "a..b",
        "a[",
        "a[\"x\"",
        "A(",
        "A(]",
        "{\"a\" 1}",
        "{1: 2}",
        "set(attributes[\"a\"], 1) where not",
        "é",
        "set(attributes[\"a\"], \"é",
        "1 == == 1",
        "1 <",
        "Int(\"1\")[",
        "[1,]",
        "{\"a\": 1,}",
        "nil nil",
    ];
    for src in samples {
        let _ = parse_condition(src);
        let _ = parse_statement(src);
        for ctx in [Context::Span, Context::Log, Context::DataPoint] {
            let _ = Condition::new(src, ctx);
        }
    }
}
