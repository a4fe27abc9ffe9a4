//! Each editor and converter.

use opentelemetry_proto::tonic::common::v1::any_value::Value as V;

use crate::tests::helpers::*;

fn base() -> Vec<opentelemetry_proto::tonic::common::v1::KeyValue> {
    vec![
        kv("http.method", s("GET")),
        kv("password", s("hunter2")),
        kv("db.password", s("x")),
        kv("count", i(3)),
        kv(
            "nested",
            map(vec![kv("inner", s("v")), kv("deep", map(vec![]))]),
        ),
        kv("items", list(vec![s("a"), s("b")])),
    ]
}

fn attrs_after(statements: &[&str]) -> Vec<opentelemetry_proto::tonic::common::v1::KeyValue> {
    on_span(statements, base()).attributes
}

#[test]
fn set_values_of_every_type() {
    let a = attrs_after(&[
        r#"set(attributes["s"], "v")"#,
        r#"set(attributes["i"], -7)"#,
        r#"set(attributes["f"], 1.5)"#,
        r#"set(attributes["b"], true)"#,
        r#"set(attributes["x"], 0x0102)"#,
        r#"set(attributes["l"], [1, "two"])"#,
        r#"set(attributes["m"], {"k": "v", "n": {"z": 1}})"#,
        r#"set(attributes["copy"], attributes["http.method"])"#,
        r#"set(attributes["count"], attributes["count"] * 2 + 1)"#,
        r#"set(attributes["e"], SPAN_KIND_SERVER)"#,
        r#"set(attributes["nested"]["inner"], "w")"#,
        r#"set(attributes["nested"]["new"]["deeper"], 1)"#,
        r#"set(attributes["items"][1], "B")"#,
        // Setting nil (a missing attribute) changes nothing.
        r#"set(attributes["http.method"], attributes["missing"])"#,
    ]);
    assert_eq!(get_str(&a, "s"), Some("v"));
    assert_eq!(get(&a, "i"), Some(&V::IntValue(-7)));
    assert_eq!(get(&a, "f"), Some(&V::DoubleValue(1.5)));
    assert_eq!(get(&a, "b"), Some(&V::BoolValue(true)));
    assert_eq!(get(&a, "x"), Some(&V::BytesValue(vec![1, 2])));
    assert!(matches!(get(&a, "l"), Some(V::ArrayValue(l)) if l.values.len() == 2));
    assert!(matches!(get(&a, "m"), Some(V::KvlistValue(m)) if m.values.len() == 2));
    assert_eq!(get_str(&a, "copy"), Some("GET"));
    assert_eq!(get(&a, "count"), Some(&V::IntValue(7)));
    assert_eq!(get(&a, "e"), Some(&V::IntValue(2)));
    assert_eq!(get_str(&a, "http.method"), Some("GET"));
    let Some(V::KvlistValue(nested)) = get(&a, "nested") else {
        panic!()
    };
    assert_eq!(get_str(&nested.values, "inner"), Some("w"));
    let Some(V::KvlistValue(new)) = get(&nested.values, "new") else {
        panic!()
    };
    assert_eq!(get(&new.values, "deeper"), Some(&V::IntValue(1)));
    let Some(V::ArrayValue(items)) = get(&a, "items") else {
        panic!()
    };
    assert_eq!(items.values[1], s("B"));
}

#[test]
fn set_span_fields() {
    let span = on_span(
        &[
            r#"set(name, Concat([name, "x"], "-"))"#,
            "set(kind, SPAN_KIND_CLIENT)",
            "set(status.code, STATUS_CODE_ERROR)",
            r#"set(status.message, "boom")"#,
            "set(end_time_unix_nano, end_time_unix_nano + 500)",
            r#"set(span_id.string, "0102030405060708")"#,
            "set(dropped_attributes_count, 3)",
        ],
        vec![],
    );
    assert_eq!(span.name, "GET /-x");
    assert_eq!(span.kind, 3);
    let status = span.status.unwrap();
    assert_eq!((status.code, status.message.as_str()), (2, "boom"));
    assert_eq!(span.end_time_unix_nano, 2_500);
    assert_eq!(span.span_id, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(span.dropped_attributes_count, 3);
}

#[test]
fn delete_and_keep() {
    let a = attrs_after(&[r#"delete_key(attributes, "password")"#]);
    assert!(get(&a, "password").is_none());
    assert_eq!(a.len(), 5);
    let a = attrs_after(&[r#"delete_matching_keys(attributes, "password$")"#]);
    assert_eq!(keys(&a), ["http.method", "count", "nested", "items"]);
    let a = attrs_after(&[r#"keep_keys(attributes, ["count", "http.method", "absent"])"#]);
    assert_eq!(keys(&a), ["http.method", "count"]);
    let a = attrs_after(&[r#"keep_keys(attributes, [])"#]);
    assert!(a.is_empty());
    let a = attrs_after(&[r#"keep_matching_keys(attributes, "^(http|db)\\.")"#]);
    assert_eq!(keys(&a), ["http.method", "db.password"]);
    // On a nested map.
    let a = attrs_after(&[r#"delete_key(attributes["nested"], "inner")"#]);
    let Some(V::KvlistValue(nested)) = get(&a, "nested") else {
        panic!()
    };
    assert_eq!(keys(&nested.values), ["deep"]);
    // A missing map is nothing to edit.
    let a = attrs_after(&[r#"delete_key(attributes["absent"], "x")"#]);
    assert_eq!(a.len(), 6);
}

#[test]
fn limit_keeps_priority_keys() {
    let a = attrs_after(&[r#"limit(attributes, 3, ["items", "count"])"#]);
    assert_eq!(keys(&a), ["http.method", "count", "items"]);
    let a = attrs_after(&["limit(attributes, 2)"]);
    assert_eq!(keys(&a), ["http.method", "password"]);
    let a = attrs_after(&["limit(attributes, 100)"]);
    assert_eq!(a.len(), 6);
    let a = attrs_after(&["limit(attributes, 0)"]);
    assert!(a.is_empty());
}

#[test]
fn truncate_all_cuts_strings_on_char_boundaries() {
    let a = on_span(
        &["truncate_all(attributes, 3)"],
        vec![
            kv("a", s("abcdef")),
            kv("b", s("ab")),
            kv("c", s("aéb")),
            kv("d", i(123456)),
        ],
    )
    .attributes;
    assert_eq!(get_str(&a, "a"), Some("abc"));
    assert_eq!(get_str(&a, "b"), Some("ab"));
    assert_eq!(get_str(&a, "c"), Some("aé"));
    assert_eq!(get(&a, "d"), Some(&V::IntValue(123456)));
    let a = on_span(&["truncate_all(attributes, 1)"], vec![kv("c", s("éa"))]).attributes;
    assert_eq!(get_str(&a, "c"), Some(""));
}

#[test]
fn replace_pattern_with_groups_function_and_format() {
    let span = on_span(
        &[
            r#"replace_pattern(attributes["url"], "token=[^&]*", "token=***")"#,
            r#"replace_pattern(attributes["card"], "^(\\d{4})\\d+$", "$1")"#,
            r#"replace_pattern(attributes["user"], "user=(\\w+)", "$1", SHA256, "user=%s")"#,
            r#"replace_pattern(attributes["n"], "1", "2")"#,
            r#"replace_pattern(name, "GET", "get")"#,
        ],
        vec![
            kv("url", s("/a?token=abc&x=1&token=def")),
            kv("card", s("4111111111111111")),
            kv("user", s("id user=alice end")),
            kv("n", i(1)),
        ],
    );
    let a = &span.attributes;
    assert_eq!(get_str(a, "url"), Some("/a?token=***&x=1&token=***"));
    assert_eq!(get_str(a, "card"), Some("4111"));
    assert_eq!(
        get_str(a, "user"),
        Some("id user=2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90 end")
    );
    // Not a string: left alone.
    assert_eq!(get(a, "n"), Some(&V::IntValue(1)));
    assert_eq!(span.name, "get /");
}

#[test]
fn replace_all_patterns_keys_and_values() {
    let a = attrs_after(&[r#"replace_all_patterns(attributes, "value", "^hunter\\d$", "***")"#]);
    assert_eq!(get_str(&a, "password"), Some("***"));
    assert_eq!(get_str(&a, "http.method"), Some("GET"));
    let a = attrs_after(&[r#"replace_all_patterns(attributes, "key", "^db\\.", "database.")"#]);
    assert_eq!(get_str(&a, "database.password"), Some("x"));
    let a = attrs_after(&[r#"replace_all_patterns(attributes, "value", "hunter2", "$0", SHA256)"#]);
    assert_eq!(
        get_str(&a, "password"),
        Some("f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7")
    );
}

#[test]
fn merge_maps_strategies() {
    let start = || vec![kv("a", s("1")), kv("b", s("2"))];
    let src = r#"{"b": "new", "c": "3"}"#;
    let a = on_span(
        &[&format!(r#"merge_maps(attributes, {src}, "insert")"#)],
        start(),
    )
    .attributes;
    assert_eq!((get_str(&a, "b"), get_str(&a, "c")), (Some("2"), Some("3")));
    let a = on_span(
        &[&format!(r#"merge_maps(attributes, {src}, "update")"#)],
        start(),
    )
    .attributes;
    assert_eq!((get_str(&a, "b"), get_str(&a, "c")), (Some("new"), None));
    let a = on_span(
        &[&format!(r#"merge_maps(attributes, {src}, "upsert")"#)],
        start(),
    )
    .attributes;
    assert_eq!(
        (get_str(&a, "b"), get_str(&a, "c")),
        (Some("new"), Some("3"))
    );
    let a = on_span(
        &[r#"merge_maps(attributes, attributes["m"], "upsert")"#],
        vec![kv("m", map(vec![kv("z", i(1))]))],
    )
    .attributes;
    assert_eq!(get(&a, "z"), Some(&V::IntValue(1)));
}

#[test]
fn converters() {
    let a = on_span(
        &[
            r#"set(attributes["sha"], SHA256("hello"))"#,
            r#"set(attributes["sha512"], SHA512("hello"))"#,
            r#"set(attributes["cat"], Concat(["a", 1, 2.5, true, attributes["missing"]], "|"))"#,
            r#"set(attributes["int1"], Int("42"))"#,
            r#"set(attributes["int2"], Int(3.9))"#,
            r#"set(attributes["int3"], Int(true))"#,
            r#"set(attributes["int4"], Int("abc"))"#,
            r#"set(attributes["dbl"], Double("2.5"))"#,
            r#"set(attributes["str1"], String(12))"#,
            r#"set(attributes["str2"], String({"a": [1, "x"]}))"#,
            r#"set(attributes["len1"], Len("héllo"))"#,
            r#"set(attributes["len2"], Len(attributes["list"]))"#,
            r#"set(attributes["sub"], Substring("abcdef", 1, 3))"#,
            r#"set(attributes["low"], ToLowerCase("AbC"))"#,
            r#"set(attributes["m1"], IsMatch(attributes["path"], "^/api/"))"#,
            r#"set(attributes["m2"], IsMatch(attributes["missing"], "x"))"#,
            r#"set(attributes["m3"], IsMatch(attributes["code"], "^2\\d\\d$"))"#,
        ],
        vec![
            kv("list", list(vec![s("x"), s("y")])),
            kv("path", s("/api/v1")),
            kv("code", i(204)),
        ],
    )
    .attributes;
    assert_eq!(
        get_str(&a, "sha"),
        Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
    );
    assert_eq!(get_str(&a, "sha512").map(str::len), Some(128));
    assert_eq!(get_str(&a, "cat"), Some("a|1|2.5|true|<nil>"));
    assert_eq!(get(&a, "int1"), Some(&V::IntValue(42)));
    assert_eq!(get(&a, "int2"), Some(&V::IntValue(3)));
    assert_eq!(get(&a, "int3"), Some(&V::IntValue(1)));
    // Int of what does not parse is nil, and setting nil is a no-op.
    assert_eq!(get(&a, "int4"), None);
    assert_eq!(get(&a, "dbl"), Some(&V::DoubleValue(2.5)));
    assert_eq!(get_str(&a, "str1"), Some("12"));
    assert_eq!(get_str(&a, "str2"), Some(r#"{"a":[1,"x"]}"#));
    assert_eq!(get(&a, "len1"), Some(&V::IntValue(6)));
    assert_eq!(get(&a, "len2"), Some(&V::IntValue(2)));
    assert_eq!(get_str(&a, "sub"), Some("bcd"));
    assert_eq!(get_str(&a, "low"), Some("abc"));
    assert_eq!(get(&a, "m1"), Some(&V::BoolValue(true)));
    assert_eq!(get(&a, "m2"), Some(&V::BoolValue(false)));
    assert_eq!(get(&a, "m3"), Some(&V::BoolValue(true)));
}

#[test]
fn conditions_compare_like_the_collector() {
    let checks = [
        (r#"attributes["code"] == 200"#, true),
        (r#"attributes["code"] == 200.0"#, true),
        (
            r#"attributes["code"] < 300 and attributes["code"] >= 200"#,
            true,
        ),
        (r#"attributes["code"] == "200""#, false),
        (r#"attributes["code"] != "200""#, true),
        (r#"attributes["code"] > "1""#, false),
        (r#"attributes["missing"] == nil"#, true),
        (r#"attributes["code"] != nil"#, true),
        (r#"attributes["path"] < "/b""#, true),
        (r#"attributes["ok"] == true"#, true),
        (r#"attributes["ok"]"#, true),
        (r#"not attributes["ok"]"#, false),
        (r#"attributes["ok"] > false"#, false),
        (r#"name == "GET /" or 1 / (1 - 1) == 1"#, true),
        (r#"kind == SPAN_KIND_SERVER"#, true),
        (r#"trace_id == 0x01010101010101010101010101010101"#, true),
        (
            r#"trace_id.string == "01010101010101010101010101010101""#,
            true,
        ),
        (r#"attributes["m"] == {"b": 2, "a": 1}"#, true),
        (r#"attributes["l"] == [1, 2]"#, true),
        (r#"IsMatch(name, "^GET")"#, true),
        (r#"Len(attributes) == 5"#, true),
        (
            "1 + 2 * 3 == 7 and (1 + 2) * 3 == 9 and 7 / 2 == 3 and 7.0 / 2 == 3.5",
            true,
        ),
        ("-(2 - 5) == 3", true),
    ];
    for (cond, want) in checks {
        let span = on_span(
            &[&format!(r#"set(attributes["hit"], true) where {cond}"#)],
            vec![
                kv("code", i(200)),
                kv("path", s("/a")),
                kv(
                    "ok",
                    opentelemetry_proto::tonic::common::v1::AnyValue {
                        value: Some(V::BoolValue(true)),
                    },
                ),
                kv("m", map(vec![kv("a", i(1)), kv("b", i(2))])),
                kv("l", list(vec![i(1), i(2)])),
            ],
        );
        assert_eq!(get(&span.attributes, "hit").is_some(), want, "{cond}");
    }
}

#[test]
fn anchored_literal_patterns_match_like_regexes() {
    use crate::ast::{Expr, Node};
    use crate::compile::{Matcher, matcher};
    let cases = [
        (r"^internal\.", "internal.x", true, "prefix"),
        (r"^internal\.", "internalx", false, "prefix"),
        (r"^/api/", "/api/v1", true, "prefix"),
        (r"^exact$", "exact", true, "exact"),
        (r"^exact$", "exactly", false, "exact"),
        (r"^a.c", "abc", true, "regex"),
        (r"^\d+", "12", true, "regex"),
        (r"password", "db.password", true, "regex"),
        (r"(?i)^PASS", "password", true, "regex"),
        // Look like literal prefixes, but are not.
        (r"^internal.", "internalX", true, "regex"),
        (r"^internal.", "internal", false, "regex"),
        (r"^internal\.|^debug", "debug.x", true, "regex"),
        (r"^internal\.|^debug", "internal.x", true, "regex"),
        (r"^internal\.|^debug", "internalx", false, "regex"),
        (r"^a+", "aaa", true, "regex"),
        (r"^a$|b", "xb", true, "regex"),
    ];
    for (pattern, text, want, kind) in cases {
        let node = Node {
            expr: Expr::Str(pattern.into()),
            pos: 0,
        };
        let m = matcher(&node).unwrap();
        let got_kind = match m {
            Matcher::Prefix(_) => "prefix",
            Matcher::Exact(_) => "exact",
            Matcher::Regex(_) => "regex",
        };
        assert_eq!(got_kind, kind, "{pattern}");
        assert_eq!(m.is_match(text), want, "{pattern} on {text}");
        assert_eq!(
            regex::Regex::new(pattern).unwrap().is_match(text),
            want,
            "{pattern}"
        );
    }
}

#[test]
fn concat_of_many_parts_and_of_parts_it_cannot_join() {
    let a = on_span(
        &[
            r#"set(attributes["ten"], Concat(["0", 1, "2", "3", "4", "5", "6", "7", "8", attributes["p"]], ","))"#,
            r#"set(attributes["eight"], Concat(["a", "b", "c", "d", "e", "f", "g", attributes["p"]], ""))"#,
            r#"set(attributes["none"], Concat([], "-"))"#,
        ],
        vec![kv("p", s("/x"))],
    )
    .attributes;
    assert_eq!(get_str(&a, "ten"), Some("0,1,2,3,4,5,6,7,8,/x"));
    assert_eq!(get_str(&a, "eight"), Some("abcdefg/x"));
    assert_eq!(get_str(&a, "none"), Some(""));

    // A map part is an error, with or without more parts than fit inline.
    let t = transform_mode(
        crate::Context::Span,
        &[
            r#"set(name, Concat([attributes["m"], "x"], "-"))"#,
            r#"set(name, Concat(["0", "1", "2", "3", "4", "5", "6", "7", "8", attributes["m"]], "-"))"#,
        ],
        crate::ErrorMode::Ignore,
    );
    let mut req = traces(vec![span("kept", vec![kv("m", map(vec![]))])]);
    let out = t.traces(&mut req).unwrap();
    assert_eq!(out.errors, 2);
    assert_eq!(spans(&req)[0].name, "kept");
}

#[test]
fn replace_pattern_leaves_non_matching_values_and_rewrites_matching_ones() {
    let a = on_span(
        &[
            r#"replace_pattern(attributes["a"], "/users/[0-9]+", "/users/{id}")"#,
            r#"replace_pattern(attributes["b"], "/users/[0-9]+", "/users/{id}")"#,
            r#"replace_pattern(attributes["c"], "(?i)SECRET=(\\w+)", "$1", SHA256, "h:%s")"#,
            r#"replace_pattern(attributes["d"], "(?i)SECRET=(\\w+)", "$1", SHA256, "h:%s")"#,
        ],
        vec![
            kv("a", s("/api/users/12/x/users/7")),
            kv("b", s("/api/orders")),
            kv("c", s("q secret=abc")),
            kv("d", s("q public")),
        ],
    )
    .attributes;
    assert_eq!(get_str(&a, "a"), Some("/api/users/{id}/x/users/{id}"));
    assert_eq!(get_str(&a, "b"), Some("/api/orders"));
    assert_eq!(
        get_str(&a, "c"),
        Some("q h:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    assert_eq!(get_str(&a, "d"), Some("q public"));
}
