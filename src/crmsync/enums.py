"""The closed vocabularies shared by the API, the database and the sync engine.

Values are the customer's exact strings (capitalised statuses, upper-case email types), because
the API is a drop-in for their system and their frontend matches on them.
"""

from enum import StrEnum


class Crm(StrEnum):
    brevo = "brevo"
    hubspot = "hubspot"
    mautic = "mautic"
    n8n = "n8n"


CRM_NAMES: tuple[str, ...] = tuple(c.value for c in Crm)

# The flat customer key that holds each CRM's external id.
CRM_ID_FIELD: dict[Crm, str] = {
    Crm.brevo: "brevo_contact_id",
    Crm.hubspot: "hubspot_contact_id",
    Crm.mautic: "mautic_contact_id",
    Crm.n8n: "n8n_workflow_id",
}


class EmailType(StrEnum):
    SERVICE = "SERVICE"
    CORPORATE = "CORPORATE"
    FREE = "FREE"
    UNKNOWN = "UNKNOWN"


class CurationStatus(StrEnum):
    New = "New"
    Queued = "Queued"
    Processing = "Processing"
    Complete = "Complete"
    Error = "Error"
    Skipped = "Skipped"


class ProcessingStatus(StrEnum):
    Queued = "Queued"
    Processing = "Processing"
    Complete = "Complete"
    Error = "Error"


class SyncStatus(StrEnum):
    New = "New"
    Selected = "Selected"
    Queued = "Queued"
    Processing = "Processing"
    Complete = "Complete"
    Error = "Error"
    Skipped = "Skipped"
