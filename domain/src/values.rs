//! Validated inputs. Each newtype's `parse` is the only way to build one from untrusted input,
//! so a value of the type is proof that the input was checked.
//!
//! Deserialization (used when events are read back from the store) accepts what was stored
//! without re-validating except where the parse also normalizes, because stored events are
//! facts: a rule tightened later must not make history unreadable.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an input was refused. The message never repeats the input itself, so it is safe to
/// show to a client and to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    #[error("must be a phone number in E.164 form, e.g. +14155550123")]
    Phone,
    #[error("must be an email address such as name@example.org")]
    Email,
    #[error("must be an IANA time zone name such as Europe/Paris")]
    TimeZone,
    #[error("must be between {min} and {max} minutes")]
    Duration { min: u16, max: u16 },
    #[error("must be in the future")]
    StartNotInFuture,
    #[error("must be 1 to 64 characters of letters, digits, '.', '_' or '-'")]
    Identifier,
    #[error("must be 1 to {max} characters without control characters")]
    Text { max: usize },
    #[error("at least one of phone or email is required")]
    NoContact,
    #[error("WhatsApp needs a phone number")]
    WhatsappWithoutPhone,
    #[error("must be an ISO 4217 currency code such as EUR")]
    Currency,
    #[error("must be a whole number of minor units between 1 and 100000000")]
    Amount,
}

/// An amount of money in minor units (cents) of an ISO 4217 currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub amount_minor: i64,
    /// Three upper-case letters (`EUR`).
    pub currency: String,
}

impl Money {
    pub fn parse(amount_minor: i64, currency: &str) -> Result<Self, InvalidInput> {
        if !(1..=100_000_000).contains(&amount_minor) {
            return Err(InvalidInput::Amount);
        }
        let currency = currency.trim();
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(InvalidInput::Currency);
        }
        Ok(Self {
            amount_minor,
            currency: currency.to_ascii_uppercase(),
        })
    }

    /// Whether a payment of `amount_minor` in `currency` (any case) is exactly this.
    pub fn matches(&self, amount_minor: i64, currency: &str) -> bool {
        self.amount_minor == amount_minor && self.currency.eq_ignore_ascii_case(currency)
    }
}

/// A phone number in E.164 form: `+`, a country code that does not start with 0, 8 to 15 digits
/// in all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    pub fn parse(input: &str) -> Result<Self, InvalidInput> {
        let digits = input.strip_prefix('+').ok_or(InvalidInput::Phone)?;
        let valid = (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if valid {
            Ok(Self(input.to_owned()))
        } else {
            Err(InvalidInput::Phone)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address: a local part and a domain with at least one dot, no spaces, at most 254
/// characters. Deliverability is the mail server's business, not ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(input: &str) -> Result<Self, InvalidInput> {
        let Some((local, domain)) = input.rsplit_once('@') else {
            return Err(InvalidInput::Email);
        };
        let valid = input.len() <= 254
            && !local.is_empty()
            && local.len() <= 64
            && !local.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '.')
            && local
                .chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && c != '<' && c != '>');
        if valid {
            Ok(Self(input.to_owned()))
        } else {
            Err(InvalidInput::Email)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An IANA time zone, e.g. `America/New_York`. Stored as its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeZone(chrono_tz::Tz);

impl TimeZone {
    pub fn parse(input: &str) -> Result<Self, InvalidInput> {
        chrono_tz::Tz::from_str(input)
            .map(Self)
            .map_err(|_| InvalidInput::TimeZone)
    }

    pub fn tz(&self) -> chrono_tz::Tz {
        self.0
    }

    pub fn name(&self) -> &'static str {
        self.0.name()
    }
}

impl Serialize for TimeZone {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for TimeZone {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::parse(&name).map_err(serde::de::Error::custom)
    }
}

/// How long a consultation lasts: 5 to 240 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DurationMinutes(u16);

impl DurationMinutes {
    pub const MIN: u16 = 5;
    pub const MAX: u16 = 240;

    pub fn parse(minutes: i64) -> Result<Self, InvalidInput> {
        match u16::try_from(minutes) {
            Ok(m) if (Self::MIN..=Self::MAX).contains(&m) => Ok(Self(m)),
            _ => Err(InvalidInput::Duration {
                min: Self::MIN,
                max: Self::MAX,
            }),
        }
    }

    pub fn minutes(&self) -> u16 {
        self.0
    }

    pub fn as_duration(&self) -> Duration {
        Duration::minutes(i64::from(self.0))
    }
}

/// The start of a consultation: strictly after the moment it was given, truncated to whole
/// seconds so that every stored instant has one textual form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StartTime(DateTime<Utc>);

impl StartTime {
    pub fn parse(at: DateTime<Utc>, now: DateTime<Utc>) -> Result<Self, InvalidInput> {
        let at = at.trunc_subsecs(0);
        if at > now {
            Ok(Self(at))
        } else {
            Err(InvalidInput::StartNotInFuture)
        }
    }

    pub fn instant(&self) -> DateTime<Utc> {
        self.0
    }
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(input: &str) -> Result<Self, InvalidInput> {
                let valid = (1..=64).contains(&input.len())
                    && input
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if valid {
                    Ok(Self(input.to_owned()))
                } else {
                    Err(InvalidInput::Identifier)
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identifier!(
    /// A provider's id, chosen by the admin who registers the provider.
    ProviderId
);
identifier!(
    /// A patient's id: the `sub` of the patient's bearer token.
    PatientId
);

/// Free text with a length bound and no control characters other than line breaks and tabs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BoundedText(String);

impl BoundedText {
    pub fn parse(input: &str, max: usize) -> Result<Self, InvalidInput> {
        let trimmed = input.trim();
        let valid = !trimmed.is_empty()
            && trimmed.chars().count() <= max
            && trimmed
                .chars()
                .all(|c| !c.is_control() || c == '\n' || c == '\t');
        if valid {
            Ok(Self(trimmed.to_owned()))
        } else {
            Err(InvalidInput::Text { max })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How a patient wants to be reached. WhatsApp is used only when the patient opted in and gave
/// a phone number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub phone: Option<PhoneNumber>,
    pub email: Option<EmailAddress>,
    pub whatsapp: bool,
}

impl Contact {
    pub fn new(
        phone: Option<PhoneNumber>,
        email: Option<EmailAddress>,
        whatsapp: bool,
    ) -> Result<Self, InvalidInput> {
        if phone.is_none() && email.is_none() {
            return Err(InvalidInput::NoContact);
        }
        if whatsapp && phone.is_none() {
            return Err(InvalidInput::WhatsappWithoutPhone);
        }
        Ok(Self {
            phone,
            email,
            whatsapp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_must_be_e164() {
        assert!(PhoneNumber::parse("+14155550123").is_ok());
        assert!(PhoneNumber::parse("+447911123456").is_ok());
        for bad in [
            "14155550123",
            "+0415555012",
            "+1415",
            "+1415555012345678",
            "+1 415 555",
            "",
        ] {
            assert_eq!(PhoneNumber::parse(bad), Err(InvalidInput::Phone), "{bad}");
        }
    }

    #[test]
    fn email_addresses_need_a_local_part_and_a_dotted_domain() {
        assert!(EmailAddress::parse("a.b+c@example.org").is_ok());
        for bad in [
            "",
            "a",
            "a@b",
            "@example.org",
            "a b@example.org",
            "a@example..org",
            "a@.org",
        ] {
            assert_eq!(EmailAddress::parse(bad), Err(InvalidInput::Email), "{bad}");
        }
    }

    #[test]
    fn time_zones_must_be_iana_names() {
        assert_eq!(
            TimeZone::parse("Europe/Paris").map(|t| t.name()),
            Ok("Europe/Paris")
        );
        assert_eq!(TimeZone::parse("Mars/Olympus"), Err(InvalidInput::TimeZone));
        assert_eq!(TimeZone::parse(""), Err(InvalidInput::TimeZone));
    }

    #[test]
    fn durations_are_bounded() {
        assert!(DurationMinutes::parse(5).is_ok());
        assert!(DurationMinutes::parse(240).is_ok());
        for bad in [4, 241, 0, -5, 100_000] {
            assert!(DurationMinutes::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn start_must_be_strictly_in_the_future_and_is_truncated_to_seconds() {
        let now = DateTime::parse_from_rfc3339("2030-01-01T10:00:00Z")
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_default();
        assert_eq!(
            StartTime::parse(now, now),
            Err(InvalidInput::StartNotInFuture)
        );
        let later = now + Duration::milliseconds(1500);
        let start = StartTime::parse(later, now).map(|s| s.instant());
        assert_eq!(start, Ok(now + Duration::seconds(1)));
    }

    #[test]
    fn identifiers_are_short_and_plain() {
        assert!(ProviderId::parse("prov-1").is_ok());
        assert!(ProviderId::parse("").is_err());
        assert!(ProviderId::parse("a/b").is_err());
        assert!(PatientId::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn contact_needs_a_channel_and_whatsapp_needs_a_phone() {
        let email = EmailAddress::parse("p@example.org").ok();
        assert_eq!(
            Contact::new(None, None, false),
            Err(InvalidInput::NoContact)
        );
        assert_eq!(
            Contact::new(None, email, true),
            Err(InvalidInput::WhatsappWithoutPhone)
        );
    }
}
