//! Integers in request bodies, read as JSON Schema reads them: `16926.0` is the integer
//! 16926 (a number whose fraction is zero is an integer), which serde's own `i64` refuses.
//! Generated clients in some languages send every number with a fraction, so the API
//! accepts them; `16926.5` is still refused.
//!
//! Use with `#[serde(default, deserialize_with = "crate::integer::option")]` on an
//! `Option` field, or `deserialize_with = "crate::integer::exact"` on a plain one.

use serde::de::{Deserializer, Visitor};

struct Exact<T>(std::marker::PhantomData<T>);

impl<T: TryFrom<i64> + TryFrom<u64>> Visitor<'_> for Exact<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an integer in range")
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<T, E> {
        T::try_from(value).map_err(|_| E::custom(format!("{value} is out of range")))
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<T, E> {
        T::try_from(value).map_err(|_| E::custom(format!("{value} is out of range")))
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<T, E> {
        // Within ±2^53 every f64 with no fraction is exactly one integer.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        if value.fract() != 0.0 || !(-EXACT..=EXACT).contains(&value) {
            return Err(E::custom(format!("{value} is not an integer")));
        }
        self.visit_i64(value as i64)
    }
}

/// A required integer field.
pub fn exact<'de, D: Deserializer<'de>, T: TryFrom<i64> + TryFrom<u64>>(
    deserializer: D,
) -> Result<T, D::Error> {
    deserializer.deserialize_any(Exact(std::marker::PhantomData))
}

/// An optional integer field (`null` or absent: `None`; pair with `#[serde(default)]`).
pub fn option<'de, D: Deserializer<'de>, T: TryFrom<i64> + TryFrom<u64>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    struct Optional<T>(std::marker::PhantomData<T>);
    impl<'de, T: TryFrom<i64> + TryFrom<u64>> Visitor<'de> for Optional<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an integer in range or null")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            exact(d).map(Some)
        }
    }
    deserializer.deserialize_option(Optional(std::marker::PhantomData))
}

/// A map of integers (`{"shop": 4.0}` reads as 4).
pub fn map<'de, D: Deserializer<'de>, T: TryFrom<i64> + TryFrom<u64>>(
    deserializer: D,
) -> Result<std::collections::BTreeMap<String, T>, D::Error> {
    struct Value<T>(T);
    impl<'de, T: TryFrom<i64> + TryFrom<u64>> serde::Deserialize<'de> for Value<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            exact(d).map(Value)
        }
    }
    let map: std::collections::BTreeMap<String, Value<T>> =
        serde::Deserialize::deserialize(deserializer)?;
    Ok(map.into_iter().map(|(k, Value(v))| (k, v)).collect())
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Body {
        #[serde(deserialize_with = "super::exact")]
        priority: i32,
        #[serde(default, deserialize_with = "super::option")]
        version: Option<i64>,
        #[serde(default, deserialize_with = "super::option")]
        share: Option<u8>,
    }

    fn read(text: &str) -> Result<Body, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn whole_numbers_with_a_fraction_of_zero_are_integers() {
        assert_eq!(
            read(r#"{"priority": 16926.0, "version": 3.0, "share": 100}"#),
            Ok(Body {
                priority: 16926,
                version: Some(3),
                share: Some(100)
            })
        );
        assert_eq!(
            read(r#"{"priority": -5, "version": null}"#),
            Ok(Body {
                priority: -5,
                version: None,
                share: None
            })
        );
    }

    #[test]
    fn fractions_strings_and_out_of_range_values_are_refused() {
        for bad in [
            r#"{"priority": 1.5}"#,
            r#"{"priority": "1"}"#,
            r#"{"priority": 3000000000}"#,
            r#"{"priority": 1e300}"#,
            r#"{"priority": 0, "share": 256}"#,
            r#"{"priority": 0, "share": -1}"#,
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn every_i64_reads_back_as_itself(n: i64) {
            let body = read(&format!(r#"{{"priority": 0, "version": {n}}}"#)).unwrap();
            proptest::prop_assert_eq!(body.version, Some(n));
        }
    }
}
