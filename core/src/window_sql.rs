//! Windows written in SQL: `GROUP BY tumble(ts, INTERVAL '1 minute')`,
//! `hop(ts, INTERVAL '1 minute', INTERVAL '5 minutes')` (slide, then size) or
//! `session(ts, INTERVAL '30 seconds')` (the gap; sessions of each combination of the other
//! `GROUP BY` columns). At parse time each call is replaced by `window_start, window_end`
//! and the window becomes the spec's `window` or `session`, so
//! planning and execution never see the calls.

use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, DateTimeField, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    GroupByExpr, Ident, Query, SetExpr, Statement, Value, VisitMut, VisitorMut,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

/// The columns a windowed source gains: each record's window, as timestamps (ms).
pub const WINDOW_START_COLUMN: &str = "window_start";
pub const WINDOW_END_COLUMN: &str = "window_end";

/// A window a query groups by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlWindow {
    /// The event-time column the call names.
    pub column: String,
    pub kind: SqlWindowKind,
}

/// Fixed windows (`tumble`, `hop`) or sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlWindowKind {
    /// `slide_ms` equals `size_ms` for a tumbling window.
    Fixed { size_ms: i64, slide_ms: i64 },
    /// Sessions per value of `key` (the other `GROUP BY` columns), ended by `gap_ms`
    /// without a record.
    Session { gap_ms: i64, key: Vec<String> },
}

/// `sql` with its window calls replaced, and the window; `None` when it has none (or does
/// not parse, which planning reports). Fails when the calls are used in a way Sluice
/// cannot run: outside `GROUP BY`, two different windows, bad arguments, a session grouped
/// with something other than plain columns.
pub fn extract_window(sql: &str) -> Result<Option<(String, SqlWindow)>, String> {
    let Ok(mut statements) = Parser::parse_sql(&GenericDialect {}, sql) else {
        return Ok(None);
    };
    let mut rewriter = GroupByRewriter::default();
    if let ControlFlow::Break(message) = statements.visit(&mut rewriter) {
        return Err(message);
    }
    if let ControlFlow::Break(name) =
        visit_expressions(&statements, |expr| match window_call(expr) {
            Some((name, _)) => ControlFlow::Break(name),
            None => ControlFlow::Continue(()),
        })
    {
        return Err(format!(
            "{name}() may only be a GROUP BY expression; select window_start and window_end for the window's bounds"
        ));
    }
    let Some(window) = rewriter.window else {
        return Ok(None);
    };
    let sql = statements
        .iter()
        .map(Statement::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Ok(Some((sql, window)))
}

/// Replaces window calls in every `GROUP BY` list, remembering the window.
#[derive(Default)]
struct GroupByRewriter {
    window: Option<SqlWindow>,
}

impl VisitorMut for GroupByRewriter {
    type Break = String;

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<String> {
        self.rewrite(query.body.as_mut())
    }
}

impl GroupByRewriter {
    /// Rewrites the `SELECT`s of a query body, through `UNION` and the like (nested
    /// queries are visited on their own).
    fn rewrite(&mut self, body: &mut SetExpr) -> ControlFlow<String> {
        match body {
            SetExpr::Select(select) => self.rewrite_group_by(&mut select.group_by),
            SetExpr::SetOperation { left, right, .. } => {
                self.rewrite(left)?;
                self.rewrite(right)
            }
            _ => ControlFlow::Continue(()),
        }
    }

    fn rewrite_group_by(&mut self, group_by: &mut GroupByExpr) -> ControlFlow<String> {
        let GroupByExpr::Expressions(exprs, _) = group_by else {
            return ControlFlow::Continue(());
        };
        let mut rewritten = Vec::with_capacity(exprs.len() + 1);
        let others: Vec<Expr> = exprs
            .iter()
            .filter(|e| window_call(e).is_none())
            .cloned()
            .collect();
        for expr in exprs.drain(..) {
            let Some((name, args)) = window_call(&expr) else {
                rewritten.push(expr);
                continue;
            };
            let window = match window_of(&name, &args, &others) {
                Ok(window) => window,
                Err(message) => return ControlFlow::Break(message),
            };
            if self.window.as_ref().is_some_and(|w| *w != window) {
                return ControlFlow::Break(
                    "a query may group by one window; this one names two different ones".into(),
                );
            }
            self.window = Some(window);
            rewritten.push(Expr::Identifier(Ident::new(WINDOW_START_COLUMN)));
            rewritten.push(Expr::Identifier(Ident::new(WINDOW_END_COLUMN)));
        }
        *exprs = rewritten;
        ControlFlow::Continue(())
    }
}

/// The name (lower case) and arguments of a `tumble`, `hop` or `session` call.
fn window_call(expr: &Expr) -> Option<(String, Vec<Expr>)> {
    let Expr::Function(function) = expr else {
        return None;
    };
    let name = function.name.to_string().to_ascii_lowercase();
    if !["tumble", "hop", "session"].contains(&name.as_str()) {
        return None;
    }
    let args = match &function.args {
        FunctionArguments::List(list) => list
            .args
            .iter()
            .filter_map(|arg| match arg {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => Some(expr.clone()),
                _ => None,
            })
            .collect(),
        _ => vec![],
    };
    Some((name, args))
}

/// The window of a call; `others` are the other expressions of its `GROUP BY`.
fn window_of(name: &str, args: &[Expr], others: &[Expr]) -> Result<SqlWindow, String> {
    let usage = match name {
        "tumble" => "tumble(ts, INTERVAL '1 minute')",
        "hop" => "hop(ts, INTERVAL '1 minute', INTERVAL '5 minutes') (slide, then size)",
        _ => "session(ts, INTERVAL '30 seconds') (the gap that ends a session)",
    };
    let expected = if name == "hop" { 3 } else { 2 };
    if args.len() != expected {
        return Err(format!("{name}() takes {expected} arguments: {usage}"));
    }
    let Some(column) = column_name(&args[0]) else {
        return Err(format!(
            "{name}()'s first argument must be the event-time column, not {}: {usage}",
            args[0]
        ));
    };
    let durations = args[1..]
        .iter()
        .map(|arg| interval_ms(arg).map_err(|e| format!("{name}(): {e}: {usage}")))
        .collect::<Result<Vec<_>, _>>()?;
    if name == "session" {
        let key = others
            .iter()
            .map(|expr| {
                column_name(expr).ok_or_else(|| {
                    format!("a session window groups by plain columns only (they are the session's key), not {expr}")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(SqlWindow {
            column,
            kind: SqlWindowKind::Session {
                gap_ms: durations[0],
                key,
            },
        });
    }
    let (slide_ms, size_ms) = match durations[..] {
        [size] => (size, size),
        [slide, size] => (slide, size),
        _ => unreachable!("argument count checked"),
    };
    if slide_ms > size_ms || size_ms % slide_ms != 0 {
        return Err(format!(
            "{name}(): the slide ({slide_ms} ms) must divide the size ({size_ms} ms): {usage}"
        ));
    }
    Ok(SqlWindow {
        column,
        kind: SqlWindowKind::Fixed { size_ms, slide_ms },
    })
}

/// The column an expression names, if it is a plain (possibly qualified) column.
fn column_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(ident.value.clone()),
        Expr::CompoundIdentifier(parts) => parts.last().map(|p| p.value.clone()),
        _ => None,
    }
}

/// An `INTERVAL '…'` literal in milliseconds: `'1 minute'`, `'90 seconds'`, `'30' SECOND`,
/// `'1 hour 30 minutes'`.
fn interval_ms(expr: &Expr) -> Result<i64, String> {
    let Expr::Interval(interval) = expr else {
        return Err(format!("{expr} is not an INTERVAL literal"));
    };
    let Expr::Value(value) = interval.value.as_ref() else {
        return Err(format!("{expr} is not an INTERVAL literal"));
    };
    let text = match &value.value {
        Value::SingleQuotedString(text) => text.clone(),
        Value::Number(number, _) => number.clone(),
        _ => return Err(format!("{expr} is not an INTERVAL literal")),
    };
    let text = match &interval.leading_field {
        Some(field) => format!("{text} {}", unit_name(field)),
        None => text,
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() || !words.len().is_multiple_of(2) {
        return Err(format!("cannot read the interval {text:?}"));
    }
    let mut total: i64 = 0;
    for pair in words.chunks(2) {
        let amount: i64 = pair[0]
            .parse()
            .map_err(|_| format!("cannot read the interval {text:?}"))?;
        let unit = match pair[1].to_ascii_lowercase().trim_end_matches('s') {
            "millisecond" => 1,
            "second" | "sec" => 1_000,
            "minute" | "min" => 60_000,
            "hour" => 3_600_000,
            "day" => 86_400_000,
            _ => return Err(format!("unsupported unit {:?} in {text:?}", pair[1])),
        };
        total = amount
            .checked_mul(unit)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| format!("the interval {text:?} is too long"))?;
    }
    if total <= 0 {
        return Err(format!("the interval {text:?} must be above zero"));
    }
    Ok(total)
}

fn unit_name(field: &DateTimeField) -> String {
    field.to_string().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(column: &str, size_ms: i64, slide_ms: i64) -> SqlWindow {
        SqlWindow {
            column: column.into(),
            kind: SqlWindowKind::Fixed { size_ms, slide_ms },
        }
    }

    #[test]
    fn session_becomes_the_window_columns_keyed_by_the_other_group_by_columns() {
        let (sql, found) = extract_window(
            "SELECT window_start, window_end, user_id, count(*) AS n FROM source \
             GROUP BY session(ts, INTERVAL '30 seconds'), user_id, source.country",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            found,
            SqlWindow {
                column: "ts".into(),
                kind: SqlWindowKind::Session {
                    gap_ms: 30_000,
                    key: vec!["user_id".into(), "country".into()]
                }
            }
        );
        assert!(
            sql.ends_with("GROUP BY window_start, window_end, user_id, source.country"),
            "{sql}"
        );
        let message = extract_window(
            "SELECT count(*) FROM source GROUP BY session(ts, INTERVAL '30 seconds'), lower(user_id)",
        )
        .unwrap_err();
        assert!(message.contains("plain columns only"), "{message}");
    }

    #[test]
    fn tumble_and_hop_become_the_window_columns() {
        let (sql, found) = extract_window(
            "SELECT window_start, window_end, user_id, count(*) AS n FROM source \
             GROUP BY tumble(ts, INTERVAL '1 minute'), user_id",
        )
        .unwrap()
        .unwrap();
        assert_eq!(found, window("ts", 60_000, 60_000));
        assert_eq!(
            sql,
            "SELECT window_start, window_end, user_id, count(*) AS n FROM source GROUP BY window_start, window_end, user_id"
        );
        let (sql, found) = extract_window(
            "SELECT * FROM (SELECT window_end, sum(amount) AS s FROM source \
             GROUP BY HOP(source.ts, INTERVAL '30' SECOND, INTERVAL '2 minutes')) t WHERE s > 1",
        )
        .unwrap()
        .unwrap();
        assert_eq!(found, window("ts", 120_000, 30_000));
        assert!(sql.contains("GROUP BY window_start, window_end)"), "{sql}");
    }

    #[test]
    fn queries_without_window_calls_are_left_alone() {
        for sql in [
            "SELECT country, count(*) FROM source GROUP BY country",
            "SELECT window_start, count(*) FROM source GROUP BY window_start, window_end",
            "SELEC nonsense",
        ] {
            assert_eq!(extract_window(sql).unwrap(), None, "{sql}");
        }
    }

    #[test]
    fn misuse_is_refused_with_how_to_write_it() {
        for (sql, why) in [
            (
                "SELECT tumble(ts, INTERVAL '1 minute') FROM source",
                "only be a GROUP BY expression",
            ),
            (
                "SELECT count(*) FROM source GROUP BY session(ts)",
                "takes 2 arguments",
            ),
            (
                "SELECT count(*) FROM source GROUP BY tumble(ts)",
                "takes 2 arguments",
            ),
            (
                "SELECT count(*) FROM source GROUP BY tumble(ts, 60)",
                "not an INTERVAL literal",
            ),
            (
                "SELECT count(*) FROM source GROUP BY tumble(ts, INTERVAL '1 fortnight')",
                "unsupported unit",
            ),
            (
                "SELECT count(*) FROM source GROUP BY tumble(ts, INTERVAL '1 minute') \
                 UNION ALL SELECT count(*) FROM source GROUP BY tumble(ts, INTERVAL '2 minutes')",
                "two different",
            ),
        ] {
            let message = extract_window(sql).unwrap_err();
            assert!(message.contains(why), "{sql}: {message}");
        }
    }

    #[test]
    fn intervals_in_several_spellings() {
        let parse = |sql: &str| {
            let expr = Parser::new(&GenericDialect {})
                .try_with_sql(sql)
                .unwrap()
                .parse_expr()
                .unwrap();
            interval_ms(&expr)
        };
        assert_eq!(parse("INTERVAL '1 hour 30 minutes'"), Ok(5_400_000));
        assert_eq!(parse("INTERVAL '500 milliseconds'"), Ok(500));
        assert_eq!(parse("INTERVAL '2' MINUTE"), Ok(120_000));
        assert_eq!(parse("INTERVAL '1 day'"), Ok(86_400_000));
        assert!(parse("INTERVAL '0 seconds'").is_err());
    }
}
