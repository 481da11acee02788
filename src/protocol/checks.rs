//! Type and range checks of the request fields a protocol defines, as OpenAI and
//! Anthropic apply them, run on a client's JSON before it is read into neutral types.
//!
//! A wrong value is refused with the field's path and what the protocol accepts
//! (`temperature: must be a number between 0 and 2, got -1`), rather than sent on for a
//! provider to refuse or, worse, ignore. `null` counts as an absent field, as both APIs
//! take it. Fields a protocol does not define are not looked at: they stay accepted. This
//! module only judges values; it converts nothing.

use serde_json::{Map, Value};

use super::InvalidBody;

/// What a field's value must be.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// A JSON number from `min` to `max`, both included.
    Number {
        min: f64,
        max: f64,
    },
    /// A whole JSON number (no fraction, no exponent) from `min` to `max`.
    Integer {
        min: i64,
        max: i64,
    },
    Bool,
    String,
    Object,
    /// An object whose values are all strings (OpenAI's `metadata`).
    StringMap,
}

/// A positive integer that fits the `u32` airbag keeps it in (`max_tokens`).
pub const POSITIVE_U32: Expect = Expect::Integer {
    min: 1,
    max: u32::MAX as i64,
};

/// A non-negative integer that fits a `u32` (`top_k`).
pub const NON_NEGATIVE_U32: Expect = Expect::Integer {
    min: 0,
    max: u32::MAX as i64,
};

/// Any integer that fits an `i64` (`seed`).
pub const ANY_INTEGER: Expect = Expect::Integer {
    min: i64::MIN,
    max: i64::MAX,
};

impl Expect {
    fn accepts(self, value: &Value) -> bool {
        match self {
            Expect::Number { min, max } => value
                .as_f64()
                .is_some_and(|number| number >= min && number <= max),
            Expect::Integer { min, max } => {
                let Value::Number(number) = value else {
                    return false;
                };
                // Above i64::MAX, a fraction or an exponent: nothing airbag keeps.
                number
                    .as_i64()
                    .is_some_and(|whole| whole >= min && whole <= max)
            }
            Expect::Bool => value.is_boolean(),
            Expect::String => value.is_string(),
            Expect::Object => value.is_object(),
            Expect::StringMap => value
                .as_object()
                .is_some_and(|map| map.values().all(Value::is_string)),
        }
    }

    /// What the protocol accepts, as the message says it.
    fn describe(self) -> String {
        match self {
            Expect::Number { min, max } => format!("a number between {min} and {max}"),
            Expect::Integer { min: 1, max } if max >= u32::MAX as i64 => {
                "a positive integer".to_string()
            }
            Expect::Integer { min: 0, max } if max >= u32::MAX as i64 => {
                "a non-negative integer".to_string()
            }
            Expect::Integer {
                min: i64::MIN,
                max: i64::MAX,
            } => "an integer".to_string(),
            Expect::Integer { min, max } => format!("an integer from {min} to {max}"),
            Expect::Bool => "true or false".to_string(),
            Expect::String => "a string".to_string(),
            Expect::Object => "a JSON object".to_string(),
            Expect::StringMap => "a JSON object whose values are strings".to_string(),
        }
    }
}

/// Check `rules` (field name, expectation) against `object`; fields are named with
/// `prefix` before them (`"metadata."` for nested ones, `""` at the top).
pub fn check_fields(
    object: &Map<String, Value>,
    prefix: &str,
    rules: &[(&str, Expect)],
) -> Result<(), InvalidBody> {
    for &(field, expect) in rules {
        match object.get(field) {
            None | Some(Value::Null) => {}
            Some(value) => check_value(&format!("{prefix}{field}"), value, expect)?,
        }
    }
    Ok(())
}

/// Check one present value.
pub fn check_value(path: &str, value: &Value, expect: Expect) -> Result<(), InvalidBody> {
    if expect.accepts(value) {
        return Ok(());
    }
    Err(InvalidBody::new(
        path,
        format!("must be {}, got {}", expect.describe(), shown(value)),
    ))
}

/// Every element of the array at `field` that is an object, with its path
/// (`tools[0]`). A non-array is left to the typed parse, which names it.
pub fn objects_in<'a>(
    object: &'a Map<String, Value>,
    field: &'a str,
) -> impl Iterator<Item = (String, &'a Map<String, Value>)> + 'a {
    object
        .get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(move |(index, item)| Some((format!("{field}[{index}]"), item.as_object()?)))
}

/// The value as it is quoted in a message: compact JSON, at most 40 characters, so a
/// message never carries a prompt-sized string.
fn shown(value: &Value) -> String {
    const LONGEST: usize = 40;
    let text = value.to_string();
    if text.chars().count() <= LONGEST {
        return text;
    }
    let cut: String = text.chars().take(LONGEST).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(value: Value, expect: Expect) -> Result<(), String> {
        check_value("f", &value, expect).map_err(|error| error.message)
    }

    #[test]
    fn numbers_are_checked_for_type_and_range() {
        let temperature = Expect::Number { min: 0.0, max: 2.0 };
        assert!(check(json!(0), temperature).is_ok());
        assert!(check(json!(2.0), temperature).is_ok());
        assert_eq!(
            check(json!(-1), temperature),
            Err("must be a number between 0 and 2, got -1".to_string())
        );
        assert!(check(json!("1"), temperature).is_err());
        assert!(check(json!(1e300), temperature).is_err());
    }

    #[test]
    fn integers_refuse_fractions_and_out_of_range_values() {
        assert!(check(json!(1), POSITIVE_U32).is_ok());
        assert!(check(json!(0), POSITIVE_U32).is_err());
        assert!(check(json!(1.5), POSITIVE_U32).is_err());
        assert!(check(json!(100.0), POSITIVE_U32).is_err());
        assert!(check(json!(u64::from(u32::MAX) + 1), POSITIVE_U32).is_err());
        assert_eq!(
            check(json!(-1), NON_NEGATIVE_U32),
            Err("must be a non-negative integer, got -1".to_string())
        );
        assert!(check(json!(i64::MIN), ANY_INTEGER).is_ok());
        assert!(check(json!(u64::MAX), ANY_INTEGER).is_err());
    }

    #[test]
    fn null_is_an_absent_field_and_long_values_are_cut() {
        let object = json!({"user": null, "metadata": {"a": 1}});
        let object = object.as_object().expect("an object");
        assert!(check_fields(object, "", &[("user", Expect::String)]).is_ok());
        let error = check_fields(object, "", &[("metadata", Expect::StringMap)])
            .expect_err("a number in metadata");
        assert_eq!(error.field, "metadata");
        let long = check(json!("x".repeat(500)), Expect::Bool).expect_err("a string");
        assert!(long.len() < 100, "{long}");
    }
}
