//! Payload templates: the origin's `{{ var }}` engine, ported.
//!
//! This is **not** Jinja. The origin (`api/utils/template_renderer.py`) runs one regular
//! expression over every string of the template:
//!
//! ```text
//! \{\{\s*([^|\s}]+)(?:\s*\|\s*([^:}]+)(?::([^}]+))?)?\s*\}\}
//! ```
//!
//! Group 1 is the variable path, group 2 the text after a `|`, group 3 the text after a `:` that
//! follows it. `find_placeholder` is a hand-written matcher that accepts exactly the strings
//! that expression accepts (including the places where the regex backtracks), so templates
//! written for the origin render the same here without pulling in a regex engine.
//!
//! Rules, as in the origin unless marked *divergence*:
//! - Objects are walked recursively, keys rendered as well as values; arrays element by element.
//!   Numbers, booleans and null in the template pass through untouched.
//! - Substitution is always into the string: null or missing becomes `""`, a string is inserted
//!   as is, an object or array as compact JSON text, a number as its JSON text. *Divergence:*
//!   booleans become `true`/`false` (Python's `str()` gave `True`/`False`, an artefact nobody
//!   consuming JSON wants), and objects use compact JSON rather than `json.dumps`' `", "`.
//! - A path is split on `.` and walked through objects only. `initial_context.x` falls back to a
//!   top-level `x` when `initial_context.x` is null or missing.
//! - Filters (applied when the value is null, missing or `""`):
//!   - `{{ v | fallback:text }}` (legacy) and `{{ v | default:text }}` insert `text`;
//!   - `{{ v | text }}` — a pipe with no `:` — inserts `text` itself: that is what the origin's
//!     `{{v | default}}` means, "default" standing for the default text. Consequently
//!     `{{ v | default }}` with no argument inserts the word `default`; we keep that rather than
//!     special-case it, so one rule covers every bare pipe;
//!   - any other `name:arg` is not a filter we know, so the whole `name:arg` is the default text
//!     (a default such as `10:30` or `https://x` is split by the regex at its first colon and
//!     put back together here).
//!
//!   Filter name and argument are trimmed: the regex captures the spaces before `}}`.
//! - Built-ins, checked before the context so they cannot be shadowed: `current_time`
//!   (RFC 3339, whole seconds, numeric offset such as `+00:00`, like Python's `isoformat()`),
//!   `current_time_<IANA zone>`, `current_weekday` (English name, e.g. `Monday`) and
//!   `current_weekday_<IANA zone>`. Without a zone, UTC. An unknown zone leaves the placeholder
//!   text unchanged, so the mistake is visible in the delivered payload instead of being an
//!   empty string nobody notices.
//! - The two characters `\` `n` in the template become a newline. *Divergence:* only in the
//!   template's own text, not inside substituted values, so context data (a Windows path, an
//!   escaped transcript) arrives byte for byte.
//!
//! Time zones come from `jiff` with its bundled copy of the IANA database (`tzdb-bundle-always`):
//! jiff is well kept, already in the dependency tree through `env_logger`, and bundling makes
//! rendering independent of whether an appliance ships `/usr/share/zoneinfo`.

use serde_json::{Map, Value};
use time::{OffsetDateTime, UtcOffset};

/// Renders every string in `template` (object keys included) against `context`.
///
/// `now` is the instant used by the `current_time*` and `current_weekday*` built-ins; it is a
/// parameter so that a payload is rendered once, with one clock reading, and tests are
/// deterministic. Rendering never fails: unknown variables become `""`.
pub fn render_template(template: &Value, context: &Value, now: OffsetDateTime) -> Value {
    match template {
        Value::String(s) => Value::String(render_str(s, context, now)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| render_template(item, context, now))
                .collect(),
        ),
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (key, value) in map {
                out.insert(
                    render_str(key, context, now),
                    render_template(value, context, now),
                );
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// Builds the frozen payload of one delivery, as the origin's `_build_webhook_payload`.
///
/// Renders `template` (`None` renders `{}`); when the result is an object without a
/// `call_disposition` key, inserts `context.gathered_context.call_disposition`, so receivers can
/// rely on the key being there. A template's own `call_disposition` wins. A missing or null
/// disposition becomes `""` (the origin's "unknown"); any other value is inserted as is.
pub fn build_payload(template: Option<&Value>, context: &Value, now: OffsetDateTime) -> Value {
    let empty = Value::Object(Map::new());
    let mut payload = render_template(template.unwrap_or(&empty), context, now);
    if let Value::Object(map) = &mut payload
        && !map.contains_key("call_disposition")
    {
        let disposition = match context
            .get("gathered_context")
            .and_then(|g| g.get("call_disposition"))
        {
            None | Some(Value::Null) => Value::String(String::new()),
            Some(v) => v.clone(),
        };
        map.insert("call_disposition".to_owned(), disposition);
    }
    payload
}

/// One regex match: byte range in the string and the three capture groups.
#[derive(Debug, PartialEq, Eq)]
struct Placeholder<'a> {
    start: usize,
    end: usize,
    path: &'a str,
    filter: Option<&'a str>,
    arg: Option<&'a str>,
}

/// Python's `\s` on `str` patterns: Unicode whitespace plus the four ASCII separators
/// (U+001C..U+001F) that `str.isspace()` counts and Rust's `char::is_whitespace` does not.
fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Byte index just past a run of `\s` starting at `i`.
fn skip_space(s: &str, i: usize) -> usize {
    s[i..]
        .char_indices()
        .find(|&(_, c)| !is_space(c))
        .map_or(s.len(), |(k, _)| i + k)
}

/// Byte index just past the longest run starting at `i` of chars for which `keep` holds.
fn take_while(s: &str, i: usize, keep: impl Fn(char) -> bool) -> usize {
    s[i..]
        .char_indices()
        .find(|&(_, c)| !keep(c))
        .map_or(s.len(), |(k, _)| i + k)
}

/// Tries the origin's regex anchored at byte `start` (which must be a char boundary).
///
/// Each greedy part is taken at its longest; the comments note why a shorter choice (what the
/// regex engine would try on backtracking) can never succeed where the longest failed, except
/// for the one case handled explicitly.
fn match_at(s: &str, start: usize) -> Option<Placeholder<'_>> {
    if !s[start..].starts_with("{{") {
        return None;
    }
    // `\s*` then group 1 `[^|\s}]+`: group 1 cannot start with a space, and a shorter group 1
    // would be followed by a char that nothing after it accepts, so longest-only is exact.
    let p_start = skip_space(s, start + 2);
    let p_end = take_while(s, p_start, |c| c != '|' && c != '}' && !is_space(c));
    if p_end == p_start {
        return None;
    }
    let path = &s[p_start..p_end];
    let after_path = skip_space(s, p_end);

    // Optional filter group: `\s*\|\s*([^:}]+)(?::([^}]+))?`.
    if s[after_path..].starts_with('|') {
        let bar = after_path + 1;
        let ws_end = skip_space(s, bar);
        // Group 2 `[^:}]+` also matches spaces, so when nothing but spaces precede `:`/`}`
        // the regex backtracks `\s*` to hand group 2 the last space; starting group 2 at the
        // bar gives the same end and a group that trims to the same text.
        let g2_end = take_while(s, ws_end, |c| c != ':' && c != '}');
        let g2_start = if g2_end == ws_end { bar } else { ws_end };
        let g2_end = take_while(s, g2_start, |c| c != ':' && c != '}');
        if g2_end > g2_start {
            let filter = &s[g2_start..g2_end];
            if s[g2_end..].starts_with(':') {
                // Group 3 `[^}]+` runs to the next `}`; a shorter group 3 would leave a
                // non-`}` char where `\s*\}\}` needs one or spaces-then-`}}`, which the
                // longest run would have reached too.
                let g3_start = g2_end + 1;
                let g3_end = take_while(s, g3_start, |c| c != '}');
                if g3_end > g3_start && s[g3_end..].starts_with("}}") {
                    return Some(Placeholder {
                        start,
                        end: g3_end + 2,
                        path,
                        filter: Some(filter),
                        arg: Some(&s[g3_start..g3_end]),
                    });
                }
                // Without group 3 the tail must match at the `:`, which it cannot; a shorter
                // group 2 ends before a char in `[^:}]`, never at `\s*\}\}`. So: no match.
                return None;
            }
            if s[g2_end..].starts_with("}}") {
                return Some(Placeholder {
                    start,
                    end: g2_end + 2,
                    path,
                    filter: Some(filter),
                    arg: None,
                });
            }
        }
        // Skipping the optional group leaves `\s*\}\}` facing the `|`: no match.
        return None;
    }
    if s[after_path..].starts_with("}}") {
        return Some(Placeholder {
            start,
            end: after_path + 2,
            path,
            filter: None,
            arg: None,
        });
    }
    None
}

/// The leftmost match at or after byte `from`, as `re.sub` scans.
fn find_placeholder(s: &str, from: usize) -> Option<Placeholder<'_>> {
    let mut i = from;
    while let Some(k) = s[i..].find("{{") {
        let at = i + k;
        if let Some(m) = match_at(s, at) {
            return Some(m);
        }
        // `{` is one byte, so `at + 1` is a char boundary.
        i = at + 1;
    }
    None
}

/// Renders one template string: placeholders substituted, `\n` in the literal text turned into
/// newlines (substituted values are left alone).
fn render_str(s: &str, context: &Value, now: OffsetDateTime) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    while let Some(m) = find_placeholder(s, pos) {
        out.push_str(&s[pos..m.start].replace("\\n", "\n"));
        match resolve(&m, context, now) {
            Some(text) => out.push_str(&text),
            // Leave the placeholder verbatim (unknown time zone).
            None => out.push_str(&s[m.start..m.end]),
        }
        pos = m.end;
    }
    out.push_str(&s[pos..].replace("\\n", "\n"));
    out
}

/// The text a placeholder renders to; `None` means "leave it as written".
fn resolve(m: &Placeholder<'_>, context: &Value, now: OffsetDateTime) -> Option<String> {
    if let Some(builtin) = builtin(m.path, now) {
        return builtin;
    }
    let value = lookup(context, m.path);
    let is_empty = matches!(value, None | Some(Value::Null))
        || matches!(value, Some(Value::String(s)) if s.is_empty());
    if is_empty && let Some(default) = default_text(m.filter, m.arg) {
        return Some(default);
    }
    Some(value.map_or_else(String::new, value_text))
}

/// The default a filter supplies, per the module doc; `None` when there is no filter.
fn default_text(filter: Option<&str>, arg: Option<&str>) -> Option<String> {
    let filter = filter?.trim();
    Some(match arg {
        None => filter.to_owned(),
        Some(arg) if filter == "default" || filter == "fallback" => arg.trim().to_owned(),
        // Not a filter: the regex split a default text at its first colon; rejoin it.
        Some(arg) => format!("{filter}:{}", arg.trim_end()),
    })
}

/// Built-in variables: `Some(Some(text))` rendered, `Some(None)` built-in with an unknown zone,
/// `None` not a built-in.
fn builtin(path: &str, now: OffsetDateTime) -> Option<Option<String>> {
    let (weekday, zone) = if path == "current_time" {
        (false, None)
    } else if path == "current_weekday" {
        (true, None)
    } else if let Some(zone) = path.strip_prefix("current_time_") {
        (false, Some(zone))
    } else if let Some(zone) = path.strip_prefix("current_weekday_") {
        (true, Some(zone))
    } else {
        return None;
    };
    let Some(local) = in_zone(now, zone) else {
        return Some(None);
    };
    Some(Some(if weekday {
        local.weekday().to_string()
    } else {
        format_time(local)
    }))
}

/// `now` seen in `zone` (UTC when `None`); `None` for an unknown zone.
fn in_zone(now: OffsetDateTime, zone: Option<&str>) -> Option<OffsetDateTime> {
    let Some(zone) = zone else {
        return Some(now.to_offset(UtcOffset::UTC));
    };
    let tz = jiff::tz::TimeZone::get(zone).ok()?;
    let instant = jiff::Timestamp::new(now.unix_timestamp(), 0).ok()?;
    let offset = UtcOffset::from_whole_seconds(tz.to_offset(instant).seconds()).ok()?;
    now.checked_to_offset(offset)
}

/// RFC 3339 with whole seconds and a numeric offset (never `Z`), like Python's `isoformat()`.
fn format_time(t: OffsetDateTime) -> String {
    let offset = t.offset();
    let sign = if offset.is_negative() { '-' } else { '+' };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{}{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        sign,
        offset.whole_hours().unsigned_abs(),
        offset.minutes_past_hour().unsigned_abs(),
    )
}

/// The origin's `get_nested_value`, with the `initial_context.` fallback to the top level.
fn lookup<'v>(context: &'v Value, path: &str) -> Option<&'v Value> {
    let found = walk(context, path);
    if matches!(found, None | Some(Value::Null))
        && let Some(rest) = path.strip_prefix("initial_context.")
    {
        return walk(context, rest).or(found);
    }
    found
}

/// Follows a dotted path through objects; arrays are not indexed (the origin does not).
fn walk<'v>(context: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .try_fold(context, |value, key| value.as_object()?.get(key))
}

/// A value as text inside a string.
fn value_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        // Bool, Number, Object, Array: their compact JSON text.
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    /// Monday 2024-01-15 23:30:00 UTC: a different date and weekday in Tokyo, a different
    /// offset sign in New York.
    const NOW: OffsetDateTime = datetime!(2024-01-15 23:30:00 UTC);

    fn ctx() -> Value {
        json!({
            "workflow_run_id": 42,
            "workflow_run_name": "run-42",
            "transcript_url": "https://api.example/api/v1/public/download/workflow/tok/transcript",
            "recording_url": null,
            "empty": "",
            "flag": true,
            "ratio": 1.5,
            "name": "Ada",
            "initial_context": {"phone": "+100", "nothing": null},
            "gathered_context": {"call_disposition": "no-answer", "nested": {"deep": "x"}},
            "cost_info": {"a": 1, "b": [1, 2]},
            "list": ["a", "b"],
            "path": "C:\\new",
        })
    }

    fn render(s: &str) -> Value {
        render_template(&json!(s), &ctx(), NOW)
    }

    #[test]
    fn string_rendering_table() {
        let cases: &[(&str, &str)] = &[
            // Plain substitution, types flattened to text.
            ("{{workflow_run_id}}", "42"),
            ("{{ workflow_run_id }}", "42"),
            ("run {{workflow_run_name}}!", "run run-42!"),
            ("{{flag}}", "true"),
            ("{{ratio}}", "1.5"),
            ("{{recording_url}}", ""),
            ("{{cost_info}}", r#"{"a":1,"b":[1,2]}"#),
            ("{{list}}", r#"["a","b"]"#),
            ("{{missing}}", ""),
            ("{{a}}{{name}}{{b}}", "Ada"),
            // Dotted paths and the initial_context fallback.
            ("{{gathered_context.call_disposition}}", "no-answer"),
            ("{{gathered_context.nested.deep}}", "x"),
            ("{{gathered_context.nested.deep.deeper}}", ""),
            ("{{list.0}}", ""),
            ("{{initial_context.phone}}", "+100"),
            ("{{initial_context.name}}", "Ada"),
            ("{{initial_context.nothing}}", ""),
            ("{{initial_context.workflow_run_id}}", "42"),
            ("{{initial_context.missing}}", ""),
            // Filters.
            ("{{missing | default:none}}", "none"),
            ("{{missing|default:two words }}", "two words"),
            ("{{missing | fallback:n/a}}", "n/a"),
            ("{{empty | fallback:was empty}}", "was empty"),
            ("{{recording_url | fallback:no rec}}", "no rec"),
            ("{{name | fallback:nobody}}", "Ada"),
            ("{{missing | Customer}}", "Customer"),
            ("{{ missing | default }}", "default"),
            ("{{name | Customer}}", "Ada"),
            ("{{missing | 10:30}}", "10:30"),
            ("{{missing | https://x.example/a}}", "https://x.example/a"),
            ("{{initial_context.missing | fallback:fb}}", "fb"),
            ("{{flag | fallback:no}}", "true"),
            // Built-ins with the fixed clock.
            ("{{current_time}}", "2024-01-15T23:30:00+00:00"),
            ("{{current_time_Asia/Tokyo}}", "2024-01-16T08:30:00+09:00"),
            (
                "{{ current_time_America/New_York }}",
                "2024-01-15T18:30:00-05:00",
            ),
            ("{{current_time_Asia/Kolkata}}", "2024-01-16T05:00:00+05:30"),
            ("{{current_time_UTC}}", "2024-01-15T23:30:00+00:00"),
            ("{{current_weekday}}", "Monday"),
            ("{{current_weekday_Asia/Tokyo}}", "Tuesday"),
            (
                "{{current_time_Mars/Olympus}}",
                "{{current_time_Mars/Olympus}}",
            ),
            (
                "{{ current_weekday_Nowhere | fallback:x }}",
                "{{ current_weekday_Nowhere | fallback:x }}",
            ),
            // Literal backslash-n in the template text; not inside values.
            ("a\\nb", "a\nb"),
            ("{{name}}\\n{{name}}", "Ada\nAda"),
            ("{{path}}", "C:\\new"),
            // Strings the regex does not match stay as written.
            ("{{}}", "{{}}"),
            ("{{ }}", "{{ }}"),
            ("{{a b}}", "{{a b}}"),
            ("{{name}", "{{name}"),
            ("{{name|x:}}", "{{name|x:}}"),
            ("{{name|}}", "{{name|}}"),
            ("{{name|x}y}}", "{{name|x}y}}"),
            ("{ {name} }", "{ {name} }"),
            ("no braces", "no braces"),
            ("", ""),
            // Regex corner cases: `{` is a legal path char; a space-only filter matches.
            ("{{{name}}}", "}"),
            ("x{{ {{name}} }}", "x }}"),
            ("{{name| }}", "Ada"),
            ("{{missing| }}", ""),
            ("{{missing | a | b }}", "a | b"),
            ("{{missing | :x}}", ":x"),
            ("héllo {{name}} ünï", "héllo Ada ünï"),
        ];
        for (template, want) in cases {
            assert_eq!(render(template), json!(want), "template {template:?}");
        }
    }

    #[test]
    fn matcher_reports_groups() {
        let m = find_placeholder("x {{ v | default : y }} z", 0).expect("match");
        assert_eq!(m.path, "v");
        assert_eq!(m.filter, Some("default "));
        assert_eq!(m.arg, Some(" y "));
        assert_eq!(m.start, 2);
        assert_eq!(m.end, 23);
    }

    #[test]
    fn recursion_keys_lists_and_leaves() {
        let template = json!({
            "{{name}}_key": "{{workflow_run_id}}",
            "list": ["{{name}}", 1, null, true, {"k": "{{missing}}"}, ["{{flag}}"]],
            "n": 7,
            "f": 2.5,
            "b": false,
            "z": null,
        });
        let want = json!({
            "Ada_key": "42",
            "list": ["Ada", 1, null, true, {"k": ""}, ["true"]],
            "n": 7,
            "f": 2.5,
            "b": false,
            "z": null,
        });
        assert_eq!(render_template(&template, &ctx(), NOW), want);
        assert_eq!(render_template(&json!(5), &ctx(), NOW), json!(5));
    }

    #[test]
    fn build_payload_cases() {
        let cases = [
            // Disposition injected when the template lacks it.
            (
                Some(json!({"event": "call_done"})),
                json!({"gathered_context": {"call_disposition": "no-answer"}}),
                json!({"event": "call_done", "call_disposition": "no-answer"}),
            ),
            // The template's own disposition wins.
            (
                Some(json!({"call_disposition": "custom-from-template"})),
                json!({"gathered_context": {"call_disposition": "no-answer"}}),
                json!({"call_disposition": "custom-from-template"}),
            ),
            // Missing context: "" rather than omission.
            (Some(json!({})), json!({}), json!({"call_disposition": ""})),
            (None, json!({}), json!({"call_disposition": ""})),
            (
                None,
                json!({"gathered_context": {"call_disposition": null}}),
                json!({"call_disposition": ""}),
            ),
            (
                None,
                json!({"gathered_context": "not an object"}),
                json!({"call_disposition": ""}),
            ),
            // A non-string disposition is inserted as is, like the origin's setdefault.
            (
                None,
                json!({"gathered_context": {"call_disposition": 3}}),
                json!({"call_disposition": 3}),
            ),
            // A rendered key counts as the template's own.
            (
                Some(json!({"{{k}}": "v"})),
                json!({"k": "call_disposition", "gathered_context": {"call_disposition": "x"}}),
                json!({"call_disposition": "v"}),
            ),
            // Transcript URL rendered from the template.
            (
                Some(json!({"transcript": "{{transcript_url}}"})),
                json!({"transcript_url": "https://b.example/api/v1/public/download/workflow/t/transcript"}),
                json!({
                    "transcript": "https://b.example/api/v1/public/download/workflow/t/transcript",
                    "call_disposition": "",
                }),
            ),
            // Not an object: nothing injected.
            (
                Some(json!(["{{name}}"])),
                json!({"name": "n"}),
                json!(["n"]),
            ),
            (Some(json!("{{name}}")), json!({"name": "n"}), json!("n")),
        ];
        for (template, context, want) in cases {
            assert_eq!(
                build_payload(template.as_ref(), &context, NOW),
                want,
                "template {template:?}"
            );
        }
    }

    #[test]
    fn time_format_keeps_numeric_utc_offset_and_drops_subseconds() {
        let t = datetime!(2024-06-01 00:00:05.999 +02:00);
        assert_eq!(format_time(t), "2024-06-01T00:00:05+02:00");
        let t = datetime!(2024-06-01 00:00:00 -09:30);
        assert_eq!(format_time(t), "2024-06-01T00:00:00-09:30");
    }
}
