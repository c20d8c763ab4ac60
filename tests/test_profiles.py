"""ProfileCatalog: botocore-read profiles turned into provider chains (no STS calls here)."""

from __future__ import annotations

import pytest

from rolebroker.errors import ConfigFileError, ProfileConfigError, ProfileNotFound
from rolebroker.hops import RoleHop, SessionTokenHop, SourceHop, chain_of
from tests.support.awsconfig import AwsFiles
from tests.support.daemon import CHAIN_CONFIG, CHAIN_CREDENTIALS


def test_chain_is_built_root_first(aws_files: AwsFiles) -> None:
    catalog = aws_files.write()
    hops = chain_of(catalog.hop("prod-admin"))
    assert [type(h) for h in hops] == [SourceHop, RoleHop, RoleHop, RoleHop]
    assert [getattr(h, "role_arn", None) for h in hops[1:]] == [
        "arn:aws:iam::111111111111:role/dev",
        "arn:aws:iam::222222222222:role/prod",
        "arn:aws:iam::333333333333:role/admin",
    ]
    prod = hops[2]
    assert isinstance(prod, RoleHop) and prod.external_id == "prod-external-id"
    assert isinstance(hops[3], RoleHop) and hops[3].session_name == "alice-admin"


def test_hops_share_keys_across_profiles(aws_files: AwsFiles) -> None:
    catalog = aws_files.write()
    admin_chain = chain_of(catalog.hop("prod-admin"))
    assert catalog.hop("prod").key == admin_chain[2].key
    assert catalog.hop("dev").key == admin_chain[1].key


def test_unchanged_definitions_keep_their_keys_across_reloads(aws_files: AwsFiles) -> None:
    before = aws_files.write()
    after = aws_files.write(CHAIN_CONFIG.replace("external_id = prod-external-id", "external_id = changed"))
    assert before.hop("dev").key == after.hop("dev").key
    assert before.hop("prod").key != after.hop("prod").key
    assert before.hop("prod-admin").key != after.hop("prod-admin").key  # its source changed
    rotated = aws_files.write(CHAIN_CONFIG, CHAIN_CREDENTIALS.replace("TestBaseSecret", "RotatedSecret"))
    assert rotated.hop("dev").key != before.hop("dev").key


def test_keys_never_contain_secrets(aws_files: AwsFiles) -> None:
    catalog = aws_files.write()
    for name in catalog.names():
        for hop in chain_of(catalog.hop(name)):
            assert "TestBaseSecret" not in hop.key and "TestBaseSecret" not in hop.label


def test_role_less_profile_is_served_through_a_session(aws_files: AwsFiles) -> None:
    provider = aws_files.write().hop("base")
    assert isinstance(provider, SessionTokenHop)
    assert isinstance(provider.source, SourceHop)


def test_profile_naming_itself_as_source_uses_its_own_keys(aws_files: AwsFiles) -> None:
    catalog = aws_files.write(
        "[profile self]\nrole_arn = arn:aws:iam::111111111111:role/s\nsource_profile = self\n"
        "aws_access_key_id = AKIASELF\naws_secret_access_key = selfsecret\n"
    )
    root = chain_of(catalog.hop("self"))[0]
    assert isinstance(root, SourceHop)
    assert root.fetch(None).access_key_id == "AKIASELF"


@pytest.mark.parametrize(
    ("config", "code"),
    [
        (
            "[profile a]\nrole_arn = arn:aws:iam::1:role/a\nsource_profile = b\n"
            "[profile b]\nrole_arn = arn:aws:iam::1:role/b\nsource_profile = a\n",
            "SourceProfileLoop",
        ),
        ("[profile a]\nrole_arn = arn:aws:iam::1:role/a\nsource_profile = ghost\n", "SourceProfileNotFound"),
        ("[profile a]\nrole_arn = arn:aws:iam::1:role/a\n", "SourceProfileMissing"),
        (
            "[profile a]\nrole_arn = arn:aws:iam::1:role/a\ncredential_source = Ec2InstanceMetadata\n",
            "UnsupportedCredentialSource",
        ),
        ("[profile a]\nrole_arn = arn:aws:iam::1:role/a\nsource_profile = a\n", "InvalidProfile"),
        (
            "[profile base]\n[profile a]\nrole_arn = arn:aws:iam::1:role/a\nsource_profile = base\n"
            "duration_seconds = 1h\n",
            "InvalidProfile",
        ),
    ],
)
def test_broken_definitions_are_profile_errors(aws_files: AwsFiles, config: str, code: str) -> None:
    catalog = aws_files.write(config, "")
    with pytest.raises(ProfileConfigError) as info:
        catalog.hop("a")
    assert info.value.code == code
    assert info.value.status == 400
    with pytest.raises(ProfileConfigError):  # memoised errors are raised again, fresh
        catalog.hop("a")


def test_unknown_profile_lists_known_ones(aws_files: AwsFiles) -> None:
    with pytest.raises(ProfileNotFound) as info:
        aws_files.write().hop("nope")
    assert "prod-admin" in info.value.message


def test_unparsable_config_is_a_config_file_error(aws_files: AwsFiles) -> None:
    with pytest.raises(ConfigFileError, match="fix the file"):
        aws_files.write("[profile broken\nkey = value\n")


def test_a_syntax_error_names_the_file_and_line_but_never_quotes_it(aws_files: AwsFiles) -> None:
    secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY0000"
    with pytest.raises(ConfigFileError) as info:
        aws_files.write(creds=f"[base]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key {secret}\n")
    assert str(aws_files.credentials) in info.value.message
    assert "at line 3" in info.value.message
    assert secret not in info.value.message
    with pytest.raises(ConfigFileError, match=r"at line 1, which is not a \[section\] header"):
        aws_files.write("[profile broken\nkey = value\n")


def test_change_detection(aws_files: AwsFiles) -> None:
    catalog = aws_files.write()
    assert not catalog.changed_on_disk()
    aws_files.config.write_text(CHAIN_CONFIG + "\n[profile more]\nregion = us-east-1\n")
    assert catalog.changed_on_disk()
