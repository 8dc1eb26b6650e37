//! Validated inputs. Each newtype's `parse` is the only way to build one from untrusted input,
//! so a value of the type is proof that the input was checked.
//!
//! Deserialization (used when events are read back from the store) accepts what was stored
//! without re-validating except where the parse also normalizes, because stored events are
//! facts: a rule tightened later must not make history unreadable.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Timelike as _, Utc};
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
    #[error("must be before 9000-01-01T00:00:00Z")]
    StartTooLate,
    #[error(
        "must be 1 to 64 characters of letters, digits, '.', '_' or '-', starting with a letter \
         or digit"
    )]
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
    /// `currency` in any case; it must be one of [`CURRENCIES`].
    pub fn parse(amount_minor: i64, currency: &str) -> Result<Self, InvalidInput> {
        if !(1..=100_000_000).contains(&amount_minor) {
            return Err(InvalidInput::Amount);
        }
        let currency = currency.trim().to_ascii_uppercase();
        if CURRENCIES.binary_search(&currency.as_str()).is_err() {
            return Err(InvalidInput::Currency);
        }
        Ok(Self {
            amount_minor,
            currency,
        })
    }

    /// Whether a payment of `amount_minor` in `currency` (any case) is exactly this.
    pub fn matches(&self, amount_minor: i64, currency: &str) -> bool {
        self.amount_minor == amount_minor && self.currency.eq_ignore_ascii_case(currency)
    }
}

/// The currencies a fee may be set in: the active codes of ISO 4217 List One (maintained by SIX
/// Financial Information for ISO), as the iso-codes project's `iso_4217.json` 4.15 lists them,
/// with the changes since: HRK withdrawn (2023), ZWG (2024) and XCG (2025) added. Left out are
/// the List One entries that are not money a fee can be paid in: precious metals (XAG, XAU, XPD,
/// XPT), bond-market units (XBA to XBD), the SDR (XDR), the SUCRE (XSU), the ADB unit (XUA), the
/// testing code (XTS) and "no currency" (XXX). Sorted, for `binary_search`.
pub const CURRENCIES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD",
    "CAD", "CDF", "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUC", "CUP",
    "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP",
    "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS",
    "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW",
    "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD",
    "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN",
    "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR",
    "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SLL",
    "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY",
    "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES",
    "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG", "ZWL",
];

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

/// An email address the mailer can send to: `local@domain`, at most 254 bytes.
///
/// The rules are those the SMTP channel's `lettre` applies when it parses the recipient
/// (through the `email_address` crate), narrowed where that is simpler, so that an address
/// accepted here is never refused when its message is sent (an address refused only then
/// dead-letters every message to it, long after the booking said yes):
///
/// - the local part is a dot-atom of RFC 5322 (letters and digits of any script and
///   ``!#$%&'*+-/=?^_`{|}~``, in non-empty atoms separated by single dots), 1 to 64 bytes;
/// - the domain is a host name of at least two labels, each 1 to 63 bytes of letters and
///   digits (any script) and `-`, starting and ending with a letter or digit (`lettre` would
///   also take one label, or `_` and the other atom symbols inside a label).
///
/// Quoted local parts (`"a b"@x.org`) and IP literals (`a@[127.0.0.1]`) are refused: `lettre`
/// parses them but cannot build a message to them.
///
/// So `a,b@x.org`, `a;b@x.org` and `Bcc:a@x.org` (which would smuggle a second recipient or a
/// header into a looser mailer) are refused. The domain crate has no `lettre` to ask, so the
/// two are kept in step by a test in the reactors crate that checks a list of addresses, and
/// many generated ones, through both (`reactors/tests/email_addresses.rs`). Deliverability is
/// the mail server's business, not ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(input: &str) -> Result<Self, InvalidInput> {
        let Some((local, domain)) = input.rsplit_once('@') else {
            return Err(InvalidInput::Email);
        };
        let valid = input.len() <= 254
            && (1..=64).contains(&local.len())
            && local
                .split('.')
                .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
            && domain.split('.').count() >= 2
            && domain.split('.').all(is_host_label);
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

/// A character of an RFC 5322 atom: a letter or digit (any script) or one of the ASCII symbols
/// allowed there.
fn is_atext(c: char) -> bool {
    c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

/// A DNS label: 1 to 63 bytes of letters, digits (any script) and `-`, starting and ending with
/// a letter or digit.
fn is_host_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label.starts_with(char::is_alphanumeric)
        && label.ends_with(char::is_alphanumeric)
        && label.chars().all(|c| c.is_alphanumeric() || c == '-')
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

/// How long a consultation lasts: 5 to 240 minutes. [`StartTime`]'s bound leaves room for the
/// longest, so that every end is an instant both databases store.
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

/// The start of a consultation: strictly after the moment it was given and before
/// [`StartTime::LATEST`], in whole seconds so that every stored instant has one textual form.
///
/// A leap second (`…23:59:60Z`, which chrono holds as a nanosecond count of a second or more)
/// is read as the second after it, as PostgreSQL reads it: SQLite's date functions, which the
/// calendar's triggers use, cannot read a 60th second, and a slot they cannot read is an
/// accept that fails for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StartTime(DateTime<Utc>);

impl StartTime {
    /// The first instant (Unix seconds) no consultation may start at: 9000-01-01T00:00:00Z.
    ///
    /// The slot of an accepted consultation is stored by triggers that read the start and end
    /// from the event's RFC 3339 text: SQLite's `julianday` reads years 0000 to 9999 only, and
    /// PostgreSQL's `timestamptz` cannot read the `+10000-…` form a later year is written in.
    /// Bounding the start well inside year 9999 leaves room for the longest duration
    /// ([`DurationMinutes::MAX`]) and for every instant derived from a slot (a grace period
    /// after the end, a reminder, the local time of the furthest time zone) without tying this
    /// bound to their sizes. No real booking is anywhere near it.
    pub const LATEST: i64 = 221_845_392_000;

    pub fn parse(at: DateTime<Utc>, now: DateTime<Utc>) -> Result<Self, InvalidInput> {
        // `timestamp()` of a leap second is that of the second it extends.
        let leap = at.nanosecond() >= 1_000_000_000;
        let seconds = at.timestamp() + i64::from(leap);
        if seconds >= Self::LATEST {
            return Err(InvalidInput::StartTooLate);
        }
        let at = DateTime::from_timestamp(seconds, 0).ok_or(InvalidInput::StartTooLate)?;
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
            /// 1 to 64 of `[A-Za-z0-9._-]`, the first a letter or digit: ids are path
            /// segments and query values, and one made of dots (`.`, `..`) names no resource
            /// once a client or proxy normalises the path.
            pub fn parse(input: &str) -> Result<Self, InvalidInput> {
                let valid = (1..=64).contains(&input.len())
                    && input.starts_with(|c: char| c.is_ascii_alphanumeric())
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
    fn email_addresses_are_what_the_mailer_can_send_to() {
        for good in [
            "o'brien+tag@mail.example.org",
            "x!#$%&*/=?^_`{|}~-y@example.org",
            "jos\u{e9}@b\u{fc}cher.example",
            "a@xn--bcher-kva.example",
            "a@1.2.3.4",
            &format!("{}@example.org", "l".repeat(64)),
            &format!("a@{}.org", "d".repeat(63)),
        ] {
            assert!(EmailAddress::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "a,b@x.org",
            "a;b@x.org",
            "Bcc:a@x.org",
            "a@b@x.org",
            "\"a b\"@x.org",
            "a..b@x.org",
            ".a@x.org",
            "a.@x.org",
            "(a)b@x.org",
            "a\\b@x.org",
            "a[b]@x.org",
            "Pat <pat@x.org>",
            "a\u{0}@x.org",
            "a@x_y.org",
            "a@-x.org",
            "a@x-.org",
            "a@[127.0.0.1]",
            "a@x.org.",
            &format!("{}@example.org", "l".repeat(65)),
            &format!("a@{}.org", "d".repeat(64)),
            &format!("a@{}.org", "d.".repeat(125)),
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
    fn start_times_stay_where_both_databases_store_them() {
        let now = DateTime::parse_from_rfc3339("2030-01-01T10:00:00Z")
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_default();
        let at = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .map(|d| d.with_timezone(&Utc))
                .expect("a timestamp")
        };
        for late in [
            "9000-01-01T00:00:00Z",
            "9999-12-31T23:00:00Z",
            "8999-12-31T23:59:60Z",
        ] {
            assert_eq!(
                StartTime::parse(at(late), now),
                Err(InvalidInput::StartTooLate),
                "{late}"
            );
        }
        let last = StartTime::parse(at("8999-12-31T23:59:59.999Z"), now).map(|s| s.instant());
        assert_eq!(last, Ok(at("8999-12-31T23:59:59Z")));
        // The longest consultation starting last still ends in a year of four digits.
        let end = at("8999-12-31T23:59:59Z") + Duration::minutes(i64::from(DurationMinutes::MAX));
        assert!(end < at("9999-12-31T23:59:59Z"));
        assert_eq!(
            DateTime::from_timestamp(StartTime::LATEST, 0),
            Some(at("9000-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn a_leap_second_is_the_second_after_it() {
        let now = DateTime::parse_from_rfc3339("2030-01-01T10:00:00Z")
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_default();
        for (leap, read) in [
            ("2030-06-30T23:59:60Z", "2030-07-01T00:00:00Z"),
            ("2030-06-30T23:59:60.75Z", "2030-07-01T00:00:00Z"),
            ("2030-07-01T01:59:60+02:00", "2030-07-01T00:00:00Z"),
            ("2030-12-31T23:59:60Z", "2031-01-01T00:00:00Z"),
        ] {
            let parsed = DateTime::parse_from_rfc3339(leap)
                .map(|d| d.with_timezone(&Utc))
                .expect("chrono reads a leap second");
            assert!(
                parsed.nanosecond() >= 1_000_000_000,
                "{leap} is a leap second"
            );
            let start = StartTime::parse(parsed, now).expect("a start");
            assert_eq!(start.instant().to_rfc3339(), read.replace('Z', "+00:00"));
            assert!(start.instant().nanosecond() < 1_000_000_000);
            assert_eq!(
                serde_json::to_string(&start).ok(),
                Some(format!("\"{read}\""))
            );
        }
    }

    #[test]
    fn fees_are_in_iso_4217_currencies() {
        assert_eq!(
            Money::parse(4500, " eur ").map(|m| m.currency),
            Ok("EUR".to_owned())
        );
        assert!(Money::parse(4500, "JPY").is_ok());
        for bad in [
            "ZZZ", "XTS", "XXX", "XAU", "EURO", "EU", "", "E R", "\u{c9}UR",
        ] {
            assert_eq!(
                Money::parse(4500, bad),
                Err(InvalidInput::Currency),
                "{bad}"
            );
        }
        assert!(CURRENCIES.windows(2).all(|w| w[0] < w[1]), "sorted");
        assert!(CURRENCIES
            .iter()
            .all(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())));
    }

    #[test]
    fn identifiers_are_short_and_plain() {
        assert!(ProviderId::parse("prov-1").is_ok());
        assert!(ProviderId::parse("").is_err());
        assert!(ProviderId::parse("a/b").is_err());
        assert!(PatientId::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn identifiers_start_with_a_letter_or_digit() {
        for good in ["dr-ada", "dr.grace_hopper-2", "7", "A.b", &"x".repeat(64)] {
            assert!(ProviderId::parse(good).is_ok(), "{good}");
            assert!(PatientId::parse(good).is_ok(), "{good}");
        }
        for bad in [
            ".", "..", "...", ".hidden", "-dr", "_x", "dr ada", "dr\u{0}",
        ] {
            assert_eq!(
                ProviderId::parse(bad),
                Err(InvalidInput::Identifier),
                "{bad}"
            );
            assert_eq!(
                PatientId::parse(bad),
                Err(InvalidInput::Identifier),
                "{bad}"
            );
        }
    }

    #[test]
    fn refusals_never_repeat_the_input() {
        let secret = "chest-pain-42";
        let errors = [
            PhoneNumber::parse(secret).err(),
            EmailAddress::parse(secret).err(),
            TimeZone::parse(secret).err(),
            ProviderId::parse(&format!(".{secret}")).err(),
            Money::parse(1, secret).err(),
            BoundedText::parse(&format!("{secret}\u{0}"), 5).err(),
        ];
        for error in errors {
            let error = error.expect("refused");
            assert!(!error.to_string().contains("chest"), "{error}");
        }
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
