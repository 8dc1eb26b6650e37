pub mod admin;
pub mod audit;
pub mod consultations;
pub mod docs;
pub mod health;
pub mod media;
pub mod notifications;
pub mod payments;
pub mod providers;
pub mod reads;

use crate::error::ApiError;

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such resource")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
