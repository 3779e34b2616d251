//! The field mapping between contacts and Twenty people, and the conversions it drives.
//!
//! Values are compared in one canonical form per Twenty field (a joined name, an E.164 phone
//! number, sorted tags, `null` for empty), so that a value that went one way and came back is
//! recognised as unchanged and never written again.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json, json};
use switchbord_api::json::struct_from_json;
use switchbord_api::v1::{TagList, UpsertContactRequest};

use crate::contacts::ContactRow;
use crate::contacts::phone::{self, PhoneNumber};
use crate::error::FieldViolation;

/// Mapped values keyed by Twenty field name, in canonical form.
pub type Values = BTreeMap<String, Json>;

const MAX_PROPERTY_KEY_LEN: usize = 128;
const MAX_CUSTOM_FIELD_LEN: usize = 63;
/// Person fields Twenty manages itself or that are composites handled by their own variants.
const RESERVED_TWENTY_FIELDS: &[&str] = &[
    "id",
    "createdAt",
    "updatedAt",
    "deletedAt",
    "createdBy",
    "position",
    "emails",
    "phones",
    "companyId",
    "company",
    "searchVector",
];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ContactField {
    Name,
    Email,
    PhoneNumber,
    ExternalReferenceId,
    Locale,
    Tags,
    Property(String),
}

impl ContactField {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "name" => Self::Name,
            "email" => Self::Email,
            "phone_number" => Self::PhoneNumber,
            "external_reference_id" => Self::ExternalReferenceId,
            "locale" => Self::Locale,
            "tags" => Self::Tags,
            other => {
                let key = other.strip_prefix("properties.")?;
                let valid = !key.trim().is_empty()
                    && key.chars().count() <= MAX_PROPERTY_KEY_LEN
                    && !key.contains('\0');
                return valid.then(|| Self::Property(key.to_owned()));
            }
        })
    }

    pub fn as_string(&self) -> String {
        match self {
            Self::Name => "name".to_owned(),
            Self::Email => "email".to_owned(),
            Self::PhoneNumber => "phone_number".to_owned(),
            Self::ExternalReferenceId => "external_reference_id".to_owned(),
            Self::Locale => "locale".to_owned(),
            Self::Tags => "tags".to_owned(),
            Self::Property(key) => format!("properties.{key}"),
        }
    }

    /// The field's value on `contact`, canonical.
    fn value(&self, contact: &ContactRow) -> Json {
        let text = |value: &Option<String>| value.clone().map_or(Json::Null, Json::String);
        let value = match self {
            Self::Name => text(&contact.name),
            Self::Email => text(&contact.email),
            Self::PhoneNumber => Json::String(contact.phone_number.clone()),
            Self::ExternalReferenceId => text(&contact.external_reference_id),
            Self::Locale => text(&contact.locale),
            Self::Tags => json!(contact.tags),
            Self::Property(key) => contact.properties.get(key).cloned().unwrap_or(Json::Null),
        };
        canonical(value)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwentyField {
    /// `name {firstName, lastName}`, as one string split on the first space.
    Name,
    /// `emails.primaryEmail`.
    PrimaryEmail,
    /// `phones.primaryPhoneNumber` with its calling and country codes.
    PrimaryPhone,
    /// A plain top-level field: `jobTitle`, `city` or a custom field.
    Plain(String),
}

impl TwentyField {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "name" => Some(Self::Name),
            "emails.primaryEmail" => Some(Self::PrimaryEmail),
            "phones.primaryPhoneNumber" => Some(Self::PrimaryPhone),
            other => {
                let mut chars = other.chars();
                let valid = chars.next().is_some_and(|first| first.is_ascii_lowercase())
                    && chars.all(|c| c.is_ascii_alphanumeric())
                    && other.len() <= MAX_CUSTOM_FIELD_LEN
                    && !RESERVED_TWENTY_FIELDS.contains(&other);
                valid.then(|| Self::Plain(other.to_owned()))
            }
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Name => "name",
            Self::PrimaryEmail => "emails.primaryEmail",
            Self::PrimaryPhone => "phones.primaryPhoneNumber",
            Self::Plain(name) => name,
        }
    }

    /// Whether a person record carries the field at all. A workspace without a custom field
    /// (or a record trimmed by Twenty) leaves it out, which says nothing of its value; only a
    /// field present and `null` or empty is a value to apply.
    fn carried_by(&self, person: &Json) -> bool {
        let key = match self {
            Self::Name => "name",
            Self::PrimaryEmail => "emails",
            Self::PrimaryPhone => "phones",
            Self::Plain(name) => name,
        };
        person.get(key).is_some()
    }

    /// The field's value on a Twenty person record, canonical.
    fn value(&self, person: &Json) -> Json {
        fn text(value: Option<&Json>) -> &str {
            value.and_then(Json::as_str).unwrap_or_default()
        }
        let value = match self {
            Self::Name => {
                let name = person.get("name");
                let first = text(name.and_then(|name| name.get("firstName")));
                let last = text(name.and_then(|name| name.get("lastName")));
                Json::String(format!("{} {}", first.trim(), last.trim()))
            }
            Self::PrimaryEmail => Json::String(
                text(person.get("emails").and_then(|e| e.get("primaryEmail"))).to_owned(),
            ),
            Self::PrimaryPhone => {
                let phones = person.get("phones");
                let number = text(phones.and_then(|p| p.get("primaryPhoneNumber")));
                let calling_code = text(phones.and_then(|p| p.get("primaryPhoneCallingCode")));
                phone_from_parts(calling_code, number).map_or(Json::Null, Json::String)
            }
            Self::Plain(name) => person.get(name).cloned().unwrap_or(Json::Null),
        };
        canonical(value)
    }

    /// Adds `value` to a Twenty request body under this field.
    fn write(&self, body: &mut Map<String, Json>, value: &Json) {
        let text = value.as_str().unwrap_or_default();
        match self {
            Self::Name => {
                let (first, last) = text.split_once(' ').unwrap_or((text, ""));
                body.insert(
                    "name".to_owned(),
                    json!({"firstName": first.trim(), "lastName": last.trim()}),
                );
            }
            Self::PrimaryEmail => {
                body.insert("emails".to_owned(), json!({"primaryEmail": text}));
            }
            Self::PrimaryPhone => {
                body.insert("phones".to_owned(), phone_parts(text));
            }
            Self::Plain(name) => {
                body.insert(name.clone(), value.clone());
            }
        }
    }
}

/// Which way a mapped field flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToTwenty,
    FromTwenty,
    Both,
    None,
}

impl Direction {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "to_twenty" => Self::ToTwenty,
            "from_twenty" => Self::FromTwenty,
            "both" => Self::Both,
            "none" => Self::None,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ToTwenty => "to_twenty",
            Self::FromTwenty => "from_twenty",
            Self::Both => "both",
            Self::None => "none",
        }
    }

    pub fn writes_twenty(self) -> bool {
        matches!(self, Self::ToTwenty | Self::Both)
    }

    pub fn reads_twenty(self) -> bool {
        matches!(self, Self::FromTwenty | Self::Both)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingEntry {
    pub contact: ContactField,
    pub twenty: TwentyField,
    pub direction: Direction,
}

/// A validated mapping: one entry per contact field, no Twenty field fed by two contact fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapping {
    entries: Vec<MappingEntry>,
}

impl Mapping {
    /// Checks the combination of `entries`; `field` prefixes the violations' field names.
    pub fn new(mut entries: Vec<MappingEntry>) -> Result<Self, Vec<FieldViolation>> {
        entries.sort_by(|a, b| a.contact.cmp(&b.contact));
        let mut violations = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let field = format!("entries[{}]", entry.contact.as_string());
            if index > 0 && entries[index - 1].contact == entry.contact {
                violations.push(FieldViolation::new(
                    field.clone(),
                    "the contact field is mapped twice",
                ));
            }
            if let Some(problem) = type_mismatch(entry) {
                violations.push(FieldViolation::new(
                    format!("{field}.twenty_field"),
                    problem,
                ));
            }
            let second_source = entry.direction.writes_twenty()
                && entries[..index].iter().any(|earlier| {
                    earlier.direction.writes_twenty() && earlier.twenty == entry.twenty
                });
            if second_source {
                violations.push(FieldViolation::new(
                    format!("{field}.twenty_field"),
                    format!(
                        "{} is already written from another contact field",
                        entry.twenty.as_str()
                    ),
                ));
            }
        }
        if violations.is_empty() {
            Ok(Self { entries })
        } else {
            Err(violations)
        }
    }

    pub fn entries(&self) -> &[MappingEntry] {
        &self.entries
    }

    /// The contact's values of every field written to Twenty.
    pub fn outbound_values(&self, contact: &ContactRow) -> Values {
        self.entries
            .iter()
            .filter(|entry| entry.direction.writes_twenty())
            .map(|entry| {
                (
                    entry.twenty.as_str().to_owned(),
                    entry.contact.value(contact),
                )
            })
            .collect()
    }

    /// What Twenty holds of the fields Switchbord writes to it: the baseline a later sync
    /// compares against.
    pub fn twenty_holds(&self, person: &Json) -> Values {
        self.entries
            .iter()
            .filter(|entry| entry.direction.writes_twenty())
            .map(|entry| (entry.twenty.as_str().to_owned(), entry.twenty.value(person)))
            .collect()
    }

    /// What a sync records as known of `person` once linked to `contact` or written from it:
    /// what Twenty holds, except where the contact is blank, which is recorded blank. Recorded
    /// as Twenty's value, a blank the contact never sent (Twenty holds a name the contact never
    /// had) would be sent as a change by the next sync, erasing what the CRM knows; a blank a
    /// write did send is blank in Twenty too.
    pub fn known_of(&self, person: &Json, contact: &ContactRow) -> Values {
        let mut known = self.twenty_holds(person);
        for (field, value) in self.outbound_values(contact) {
            if value.is_null() {
                known.insert(field, Json::Null);
            }
        }
        known
    }

    /// A Twenty request body setting `values` (keys are Twenty field names of this mapping).
    pub fn request_body(&self, values: &Values) -> Json {
        let mut body = Map::new();
        for (name, value) in values {
            if let Some(field) = TwentyField::parse(name) {
                field.write(&mut body, value);
            }
        }
        Json::Object(body)
    }

    /// An upsert carrying the person's values of every field read from Twenty that the record
    /// carries: a field it leaves out keeps the contact's value. `current_phone` stands in when
    /// the phone number is not read from Twenty or the person has none.
    pub fn contact_request(
        &self,
        person: &Json,
        current_phone: Option<&str>,
    ) -> Option<UpsertContactRequest> {
        let mut request = UpsertContactRequest::default();
        let mut properties = Map::new();
        let read = self
            .entries
            .iter()
            .filter(|entry| entry.direction.reads_twenty() && entry.twenty.carried_by(person));
        for entry in read {
            let value = entry.twenty.value(person);
            match &entry.contact {
                ContactField::Name => {
                    properties.insert("name".to_owned(), value);
                }
                ContactField::Email => {
                    properties.insert("email".to_owned(), value);
                }
                ContactField::Locale => {
                    properties.insert("locale".to_owned(), value);
                }
                ContactField::Property(key) => {
                    properties.insert(key.clone(), value);
                }
                ContactField::PhoneNumber => {
                    if let Json::String(number) = value {
                        request.phone_number = number;
                    }
                }
                // An external reference id is never cleared from Twenty: other systems key on it.
                ContactField::ExternalReferenceId => {
                    request.external_reference_id = value.as_str().map(str::to_owned);
                }
                ContactField::Tags => {
                    let values = match value {
                        Json::Array(items) => items
                            .into_iter()
                            .filter_map(|item| item.as_str().map(str::to_owned))
                            .collect(),
                        _ => Vec::new(),
                    };
                    request.tags = Some(TagList { values });
                }
            }
        }
        if request.phone_number.is_empty() {
            request.phone_number = current_phone?.to_owned();
        }
        request.person_properties = Some(struct_from_json(properties));
        Some(request)
    }
}

/// The mapping a new installation starts with (also seeded by the migration).
pub fn default_entries() -> Vec<MappingEntry> {
    [
        ("name", "name"),
        ("email", "emails.primaryEmail"),
        ("phone_number", "phones.primaryPhoneNumber"),
        ("external_reference_id", "externalReferenceId"),
        ("locale", "locale"),
        ("tags", "tags"),
    ]
    .into_iter()
    .map(|(contact, twenty)| MappingEntry {
        contact: ContactField::parse(contact).expect("default contact field"),
        twenty: TwentyField::parse(twenty).expect("default Twenty field"),
        direction: Direction::Both,
    })
    .collect()
}

/// Twenty's composite fields hold one kind of value each.
fn type_mismatch(entry: &MappingEntry) -> Option<String> {
    let fits = match (&entry.twenty, &entry.contact) {
        (TwentyField::PrimaryPhone, contact) => *contact == ContactField::PhoneNumber,
        (TwentyField::PrimaryEmail, contact) => *contact == ContactField::Email,
        (TwentyField::Name, contact) => *contact == ContactField::Name,
        (TwentyField::Plain(_), _) => true,
    };
    (!fits).then(|| {
        format!(
            "{} can only be mapped to {}",
            entry.twenty.as_str(),
            match entry.twenty {
                TwentyField::PrimaryPhone => "phone_number",
                TwentyField::PrimaryEmail => "email",
                _ => "name",
            }
        )
    })
}

/// One form for equal values: trimmed strings, string arrays sorted, `null` for empty ones.
fn canonical(value: Json) -> Json {
    match value {
        Json::String(text) => {
            let trimmed = text.trim();
            if trimmed.is_empty() {
                Json::Null
            } else {
                Json::String(trimmed.to_owned())
            }
        }
        Json::Array(items) if items.iter().all(Json::is_string) => {
            let mut texts: Vec<String> = items
                .into_iter()
                .filter_map(|item| item.as_str().map(str::trim).map(str::to_owned))
                .filter(|text| !text.is_empty())
                .collect();
            texts.sort();
            texts.dedup();
            if texts.is_empty() {
                Json::Null
            } else {
                json!(texts)
            }
        }
        other => other,
    }
}

/// Twenty keeps the national number and the calling code apart; Switchbord keeps E.164.
fn phone_from_parts(calling_code: &str, number: &str) -> Option<String> {
    let number = number.trim();
    if number.is_empty() {
        return None;
    }
    let raw = if number.starts_with('+') || calling_code.trim().is_empty() {
        number.to_owned()
    } else {
        format!("+{}{number}", calling_code.trim().trim_start_matches('+'))
    };
    phone::normalize(&raw, None)
        .ok()
        .map(PhoneNumber::into_string)
}

fn phone_parts(e164: &str) -> Json {
    match phone::split(e164) {
        Some(parts) => json!({
            "primaryPhoneNumber": parts.national_number,
            "primaryPhoneCallingCode": format!("+{}", parts.calling_code),
            "primaryPhoneCountryCode": parts.region.unwrap_or_default(),
        }),
        None => json!({"primaryPhoneNumber": e164}),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use switchbord_api::json::json_from_struct;
    use uuid::Uuid;

    use super::*;

    fn contact() -> ContactRow {
        ContactRow {
            id: Uuid::nil(),
            phone_number: "+4915112345678".to_owned(),
            external_reference_id: Some("crm-1".to_owned()),
            name: Some("Mary Ann Smith".to_owned()),
            email: Some("mary@example.com".to_owned()),
            locale: Some("de-DE".to_owned()),
            subscriber_status: "subscribed".to_owned(),
            properties: json!({"plan": "gold"}),
            tags: vec!["b".to_owned(), "a".to_owned()],
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn entry(contact: &str, twenty: &str, direction: Direction) -> MappingEntry {
        MappingEntry {
            contact: ContactField::parse(contact).unwrap(),
            twenty: TwentyField::parse(twenty).unwrap(),
            direction,
        }
    }

    #[test]
    fn a_value_that_went_to_twenty_and_came_back_is_unchanged() {
        let mapping = Mapping::new(default_entries()).unwrap();
        let sent = mapping.outbound_values(&contact());
        let mut person = mapping.request_body(&sent);
        person["id"] = json!("p1");
        assert_eq!(
            person["name"],
            json!({"firstName": "Mary", "lastName": "Ann Smith"})
        );
        assert_eq!(
            person["phones"],
            json!({"primaryPhoneNumber": "15112345678", "primaryPhoneCallingCode": "+49", "primaryPhoneCountryCode": "DE"})
        );
        assert_eq!(mapping.twenty_holds(&person), sent);
    }

    #[test]
    fn fields_a_record_leaves_out_keep_the_contacts_values() {
        let mapping = Mapping::new(default_entries()).unwrap();
        // A workspace without the `locale` and `tags` fields, and a person without a name.
        let person = json!({
            "id": "p1",
            "emails": {"primaryEmail": ""},
            "phones": {"primaryPhoneNumber": "15112345678", "primaryPhoneCallingCode": "+49"},
        });
        let request = mapping.contact_request(&person, None).unwrap();
        assert_eq!(request.tags, None, "tags kept");
        let properties = json_from_struct(request.person_properties.unwrap());
        // A field sent empty is a value (the email cleared); one left out is not.
        assert_eq!(
            properties,
            json!({"email": null}).as_object().cloned().unwrap()
        );
    }

    #[test]
    fn two_sources_for_one_twenty_field_are_refused() {
        let refused = Mapping::new(vec![
            entry("properties.a", "plan", Direction::Both),
            entry("properties.b", "plan", Direction::ToTwenty),
        ])
        .unwrap_err();
        assert_eq!(refused[0].field, "entries[properties.b].twenty_field");
        // Reading one Twenty field into two contact fields is fine.
        assert!(
            Mapping::new(vec![
                entry("properties.a", "plan", Direction::Both),
                entry("properties.b", "plan", Direction::FromTwenty),
            ])
            .is_ok()
        );
    }

    #[test]
    fn composite_fields_take_their_own_kind_of_value() {
        let refused = Mapping::new(vec![entry(
            "email",
            "phones.primaryPhoneNumber",
            Direction::Both,
        )])
        .unwrap_err();
        assert!(refused[0].description.contains("phone_number"));
    }

    #[test]
    fn unknown_field_names_are_not_parsed() {
        assert_eq!(ContactField::parse("nickname"), None);
        assert_eq!(ContactField::parse("properties."), None);
        assert_eq!(TwentyField::parse("emails.additionalEmails"), None);
        assert_eq!(TwentyField::parse("createdAt"), None);
        assert_eq!(TwentyField::parse("Plan"), None);
        assert!(TwentyField::parse("jobTitle").is_some());
    }
}
