"""Licence names, what a task asks for, and the counts read from FlexLM and RLM status output."""

from typing import Any

import pytest

from shared.errors import InvalidSpec
from shared.licences import LicenceCount, check_licence_name, parse_licence_needs, parse_lmstat, parse_rlmstat

LMSTAT = """\
lmutil - Copyright (c) 1989-2023 Flexera. All Rights Reserved.
Flexible License Manager status on Thu 1/11/2024 09:41

[Detecting lmgrd processes...]
License server status: 27000@licserver
    License file(s) on licserver: /opt/foundry/licenses/foundry.lic:

  licserver: license server UP (MASTER) v11.19.0

Vendor daemon status (on licserver):

   foundry: UP v11.19.0
Feature usage info:

Users of nuke_i:  (Total of 10 licenses issued;  Total of 3 licenses in use)

  "nuke_i" v2024.0331, vendor: foundry, expiry: permanent(no expiration date)
  floating license

    rahul ws-comp-01 ws-comp-01:0 (v2024.0331) (licserver/27000 101), start Thu 1/11 9:30
    mei ws-comp-04 ws-comp-04:0 (v2024.0331) (licserver/27000 202), start Thu 1/11 9:32
    ana render07 /dev/tty (v2024.0331) (licserver/27000 303), start Thu 1/11 9:35

Users of nuke_r:  (Total of 20 licenses issued;  Total of 0 licenses in use)

Users of nukex_i:  (Total of 1 license issued;  Total of 1 license in use)

  "nukex_i" v2024.0331, vendor: foundry, expiry: permanent(no expiration date)
  floating license

    mei ws-comp-04 ws-comp-04:0 (v2024.0331) (licserver/27000 404), start Thu 1/11 9:40

Users of hiero_i:  (Error: 1 licenses, unsupported by licensed server)

Users of modo_node:  (Uncounted, node-locked)

Users of katana_r:  (Total of 5 licenses issued;  Total of
Users of mari_i:  (Total of 4 licences issued;  Total of 1 licence in use)
"""


def test_lmstat_counts_each_feature_issued_and_in_use() -> None:
    counts = parse_lmstat(LMSTAT)
    assert counts == {"nuke_i": LicenceCount(10, 3), "nuke_r": LicenceCount(20, 0),
                      "nukex_i": LicenceCount(1, 1)}


def test_lmstat_features_with_errors_uncounted_or_cut_short_are_left_out() -> None:
    counts = parse_lmstat(LMSTAT)
    assert {"hiero_i", "modo_node", "katana_r", "mari_i"}.isdisjoint(counts)


def test_lmstat_of_two_servers_adds_the_same_feature_up() -> None:
    text = ("Users of houdini:  (Total of 4 licenses issued;  Total of 1 license in use)\n"
            "License server status: 1715@second\n"
            "Users of houdini:  (Total of 2 licenses issued;  Total of 2 licenses in use)\n")
    assert parse_lmstat(text) == {"houdini": LicenceCount(6, 3)}


def test_lmstat_that_could_not_reach_its_server_has_no_counts() -> None:
    text = ("lmutil - Copyright (c) 1989-2023 Flexera. All Rights Reserved.\n"
            "Error getting status: Cannot connect to license server system. (-15,10:111 "
            "\"Connection refused\")\n")
    assert parse_lmstat(text) == {}


RLMSTAT = """\
rlmstat v15.1
Copyright (C) 2006-2023, Reprise Software, Inc. All rights reserved.

\trlm status on licserver (port 5053), up 3d 04:12:09
\trlm software version v15.1 (build:2)
\trlm comm version: v1.2

\t--------- ISV servers ----------
\t   Name           port Running Restarts
\t   foundry       49679   Yes       0
\t   sesinetd      1715    Yes       0

\tfoundry license pool status on licserver (port 49679)

\tnuke_i v2024.0331, pool: 1
\t\tcount: 5, # reservations: 0, inuse: 2, exp: permanent
\t\tobsolete: 0, min_remove: 120, total checkouts: 2321
\tnuke_i v2025.0101, pool: 2
\t\tcount: 3, # reservations: 0, inuse: 1, exp: 31-dec-2025
\t\tobsolete: 0, min_remove: 120, total checkouts: 12
\tnukex_i v2024.0331
\t\tcount: 1, # reservations: 0, inuse: 0, exp: 31-mar-2026
\t\tobsolete: 0, min_remove: 120, total checkouts: 346
\tkatana v6.0
\t\tToken-based license, uses: katana_token
\tmari v7.0
\t\tcount: garbled
\tmodo v17.0 count: 2, # reservations: 0, inuse: 1, exp: permanent

\tfoundry license usage status on licserver (port 49679)

\tnuke_i v2024.0331: rahul@ws-comp-01 1/0 at 01/11 09:30  (handle: 41)
\tnuke_i v2024.0331: mei@ws-comp-04 1/0 at 01/11 09:32  (handle: 42)
\tnuke_i v2025.0101: ana@render07 1/0 at 01/11 09:35  (handle: 43)
\tmodo v17.0: ana@render07 1/0 at 01/11 09:35  (handle: 44)
"""


def test_rlmstat_counts_each_product_adding_up_its_versions() -> None:
    assert parse_rlmstat(RLMSTAT) == {"nuke_i": LicenceCount(8, 3), "nukex_i": LicenceCount(1, 0),
                                      "modo": LicenceCount(2, 1)}


def test_rlmstat_token_based_or_garbled_products_are_left_out() -> None:
    counts = parse_rlmstat(RLMSTAT)
    assert {"katana", "mari", "rlmstat", "rlm"}.isdisjoint(counts)


def test_rlmstat_count_line_without_its_product_line_counts_for_nothing() -> None:
    text = "\tfoundry license pool status on licserver (port 49679)\n\n" \
           "\t\tcount: 5, # reservations: 0, inuse: 2, exp: permanent\n"
    assert parse_rlmstat(text) == {}


def test_status_outputs_of_the_other_server_kind_give_nothing() -> None:
    assert parse_rlmstat(LMSTAT) == {}
    assert parse_lmstat(RLMSTAT) == {}


# --- names and needs -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["houdini", "nuke_i", "RenderMan-25", "karma.xpu", "vray+", "3delight",
                                  "a" * 64])
def test_valid_licence_names_are_accepted(name: str) -> None:
    assert check_licence_name(name, "name") == name


@pytest.mark.parametrize("name", ["", "-nuke", "_nuke", "two words", "nuke/i", "a" * 65, "nuke\n", 7,
                                  None])
def test_bad_licence_names_are_refused_naming_where_and_the_value(name: Any) -> None:
    with pytest.raises(InvalidSpec, match=r"^pools\.name: ") as refused:
        check_licence_name(name, "pools.name")
    assert repr(name) in str(refused.value)


def test_needs_as_a_mapping_are_kept_with_their_counts() -> None:
    assert parse_licence_needs({"karma": 2, "houdini": 1}, "licences") == {"houdini": 1, "karma": 2}


def test_needs_as_a_list_count_one_each_and_a_name_listed_twice_counts_twice() -> None:
    assert parse_licence_needs(["houdini", "karma", "karma"], "licences") == \
        {"houdini": 1, "karma": 2}


def test_no_needs_are_no_licences() -> None:
    assert parse_licence_needs({}, "licences") == {}
    assert parse_licence_needs([], "licences") == {}


@pytest.mark.parametrize(("value", "message"), [
    ({"houdini": 0}, "layers[0].licences.houdini: must be a whole number >= 1, got 0"),
    ({"houdini": -2}, "layers[0].licences.houdini: must be a whole number >= 1, got -2"),
    ({"houdini": 1.5}, "layers[0].licences.houdini: must be a whole number >= 1, got 1.5"),
    ({"houdini": True}, "layers[0].licences.houdini: must be a whole number >= 1, got True"),
    ({"houdini": "1"}, "layers[0].licences.houdini: must be a whole number >= 1, got '1'"),
    ({"hou dini": 1}, "layers[0].licences: 'hou dini' is not a licence name"),
    (["houdini", "bad/name"], "layers[0].licences[1]: 'bad/name' is not a licence name"),
    (["houdini", 3], "layers[0].licences[1]: 3 is not a licence name"),
    ("houdini", "layers[0].licences: expected an object of licence name -> count or a list"),
    (None, "layers[0].licences: expected an object"),
    (True, "layers[0].licences: expected an object"),
])
def test_bad_needs_are_refused_naming_the_path(value: Any, message: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        parse_licence_needs(value, "layers[0].licences")
    assert str(refused.value).startswith(message)
