import pytest

from configs import cinemagraph, four_d
from configs.overrides import apply_overrides, split_overrides


@pytest.mark.parametrize("module", [cinemagraph, four_d])
def test_variants_and_unknown_variant(module):
    default, tiny, paper = module.get_config(), module.get_config("tiny"), module.get_config("paper")
    assert default.to_dict() != tiny.to_dict()
    assert paper is not None
    with pytest.raises(ValueError):
        module.get_config("huge")


def test_paper_values_from_the_official_code():
    c = cinemagraph.get_config("paper")
    assert c.render.point_radius == 1.5 and c.layering.distance_threshold == 5.0 and c.render.crop == 32
    f = four_d.get_config("paper")
    assert f.grid.time_grid_size == 64 and f.grid.num_levels == 16 and f.grid.finest_resolution == 2048
    assert f.optim.lr_grid == 1e-2 and f.optim.lr_mlp == 1e-3 and f.reg.lambda_time_tv == 0.1


def test_overrides_cast_by_type_and_reject_bad_keys():
    c = cinemagraph.get_config()
    rest, ov = split_overrides(["animate", "x.jpg", "--config.io.max_side=512", "--config.render.adaptive_radius=false",
                                "--config.render.point_radius=2", "--config.trajectory.name=side"])
    assert rest == ["animate", "x.jpg"]
    apply_overrides(c, ov)
    assert c.io.max_side == 512 and c.render.adaptive_radius is False
    assert c.render.point_radius == 2.0 and isinstance(c.render.point_radius, float)
    assert c.trajectory.name == "side"
    import ml_collections

    f = ml_collections.ConfigDict({"cameras": {"polar_range": (45.0, 135.0)}})  # a tuple-valued key
    apply_overrides(f, ["cameras.polar_range=(30, 150)"])
    assert tuple(f.cameras.polar_range) == (30, 150)
    with pytest.raises(ValueError, match="unknown config key"):
        apply_overrides(c, ["render.nope=1"])
    with pytest.raises(ValueError, match="expects int"):
        apply_overrides(c, ["io.max_side=1.5"])
    with pytest.raises(ValueError, match="expects bool"):
        apply_overrides(c, ["render.adaptive_radius=maybe"])
    with pytest.raises(ValueError, match="key.sub=value"):
        apply_overrides(c, ["render.point_radius"])
