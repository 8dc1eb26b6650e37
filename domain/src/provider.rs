//! The provider aggregate: a clinician who can be booked.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::values::{BoundedText, EmailAddress, Money, PhoneNumber, ProviderId, TimeZone};

/// What the directory knows of a provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderProfile {
    pub id: ProviderId,
    pub name: BoundedText,
    pub phone: PhoneNumber,
    pub email: EmailAddress,
    pub timezone: TimeZone,
    /// The consultation fee; bookings record it as their price. Providers registered before
    /// fees existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fee: Option<Money>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProviderCommand {
    Register {
        profile: ProviderProfile,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProviderEvent {
    Registered {
        profile: ProviderProfile,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for ProviderEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Registered { .. } => "Registered".to_owned(),
        }
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot register a provider that is registered already")]
    AlreadyRegistered,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provider {
    pub profile: Option<ProviderProfile>,
    pub registered_at: Option<DateTime<Utc>>,
    pub version: u64,
}

impl Provider {
    pub fn decide(&self, command: ProviderCommand) -> Result<Vec<ProviderEvent>, ProviderError> {
        match command {
            ProviderCommand::Register { .. } if self.profile.is_some() => {
                Err(ProviderError::AlreadyRegistered)
            }
            ProviderCommand::Register { profile, at } => {
                Ok(vec![ProviderEvent::Registered { profile, at }])
            }
        }
    }
}

impl Aggregate for Provider {
    const TYPE: &'static str = "provider";
    type Command = ProviderCommand;
    type Event = ProviderEvent;
    type Error = ProviderError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        match event {
            ProviderEvent::Registered { profile, at } => {
                self.profile = Some(profile);
                self.registered_at = Some(at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn profile() -> Option<ProviderProfile> {
        Some(ProviderProfile {
            id: ProviderId::parse("prov-1").ok()?,
            name: BoundedText::parse("Dr. Ada", 200).ok()?,
            phone: PhoneNumber::parse("+14155550100").ok()?,
            email: EmailAddress::parse("ada@example.org").ok()?,
            timezone: TimeZone::parse("America/New_York").ok()?,
            fee: Money::parse(4500, "eur").ok(),
        })
    }

    #[test]
    fn a_new_provider_is_registered() {
        let profile = profile().expect("valid profile");
        let at = DateTime::<Utc>::UNIX_EPOCH;
        TestFramework::<Provider>::with(())
            .given_no_previous_events()
            .when(ProviderCommand::Register {
                profile: profile.clone(),
                at,
            })
            .then_expect_events(vec![ProviderEvent::Registered { profile, at }]);
    }

    #[test]
    fn a_provider_cannot_be_registered_twice() {
        let profile = profile().expect("valid profile");
        let at = DateTime::<Utc>::UNIX_EPOCH;
        TestFramework::<Provider>::with(())
            .given(vec![ProviderEvent::Registered {
                profile: profile.clone(),
                at,
            }])
            .when(ProviderCommand::Register { profile, at })
            .then_expect_error(ProviderError::AlreadyRegistered);
    }
}
