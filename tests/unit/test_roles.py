"""The roles of people who log in, as data, and the rules for their accounts."""

from __future__ import annotations

import pytest

from gateway.auth.roles import (
    ROLES,
    Area,
    InvalidAccount,
    Patients,
    Role,
    check_name,
    check_practitioner,
    may_see,
    name_key,
    parse_role,
    sees_clinical_values,
)


def test_the_five_roles_and_what_each_sees() -> None:
    assert [r.value for r in Role] == ["pharmacist", "coordinator", "analyst", "admin", "auditor"]
    assert set(ROLES) == set(Role)
    assert ROLES[Role.PHARMACIST].patients is Patients.CARE_TEAM
    assert may_see(Role.PHARMACIST, Area.UNASSIGNED_WORK) and may_see(Role.PHARMACIST, Area.WORKLIST)
    assert ROLES[Role.COORDINATOR].patients is Patients.PRIOR_AUTH and may_see(Role.COORDINATOR, Area.PA_WORK)
    assert ROLES[Role.ANALYST].patients is Patients.NONE
    assert may_see(Role.ANALYST, Area.MESSAGE_LOG) and may_see(Role.ANALYST, Area.SUBSCRIPTIONS)
    assert not sees_clinical_values(Role.ANALYST)
    assert ROLES[Role.AUDITOR].areas == {Area.AUDIT_EVENTS}
    assert ROLES[Role.ADMIN].patients is Patients.ALL and all(may_see(Role.ADMIN, a) for a in Area)
    # Only the admin manages users or reads every patient; only the pharmacist acts as a Practitioner.
    assert [r for r in Role if may_see(r, Area.USERS)] == [Role.ADMIN]
    assert [r for r in Role if ROLES[r].needs_practitioner] == [Role.PHARMACIST]
    assert [r for r in Role if may_see(r, Area.AUDIT_EVENTS)] == [Role.ADMIN, Role.AUDITOR]


def test_roles_parse_ignoring_case_and_unknown_ones_name_the_choices() -> None:
    assert parse_role(" Pharmacist ") is Role.PHARMACIST
    with pytest.raises(InvalidAccount, match=r"unknown role 'nurse' \(one of: pharmacist, coordinator"):
        parse_role("nurse")


def test_a_pharmacist_needs_a_well_formed_practitioner_reference() -> None:
    assert check_practitioner(Role.PHARMACIST, "Practitioner/ph-1.a") == "Practitioner/ph-1.a"
    with pytest.raises(InvalidAccount, match="needs --practitioner"):
        check_practitioner(Role.PHARMACIST, None)
    for malformed in ("ph-1", "Patient/1", "Practitioner/", "Practitioner/a b", "Practitioner/" + "x" * 65):
        with pytest.raises(InvalidAccount, match="Practitioner/ID"):
            check_practitioner(Role.ANALYST, malformed)
    assert check_practitioner(Role.ADMIN, None) is None
    assert check_practitioner(Role.COORDINATOR, "Practitioner/c1") == "Practitioner/c1"


def test_user_names() -> None:
    for good in ("alice", "a.b_c@example.org", "Pharm-1"):
        assert check_name(good) == good
    for bad in ("", "-rf", "a b", "x" * 65, "ümlaut", "a/b"):
        with pytest.raises(InvalidAccount):
            check_name(bad)
    assert name_key("Alice") == name_key("ALICE") == "alice"
