"""The images domain's networks (U-Net, DiT) and build_network: shapes for odd sizes, zero output
at initialisation, gradients everywhere, no mixing of examples, the conditioning contract (null
label, low-resolution image, self-conditioning), where the U-Net attends, DiT's adaLN-Zero.
Tiny sizes; float64 where precision matters."""

import pytest
import torch

from sciffusion.core.io import InputError
from sciffusion.core.layers import ResBlock
from sciffusion.core.state import State
from sciffusion.domains.images.dit import DiTBlock, ImageDiT
from sciffusion.domains.images.networks import build_network
from sciffusion.domains.images.unet import ImageUNet, SelfAttention2d, attention_levels

TINY = {
    "unet": {"network": "unet", "channels": 8, "mults": [1, 2], "res_blocks": 1, "attention_res": 16, "heads": 2},
    "dit": {"network": "dit", "patch": 2, "hidden": 16, "depth": 2, "heads": 2, "mlp_ratio": 2.0},
}
KINDS = tuple(TINY)


def tiny(kind, channels_in=3, num_classes=0, cond_channels=0, self_conditioning=False, size=(8, 8)):
    torch.manual_seed(0)
    return build_network(TINY[kind], channels_in, num_classes, cond_channels, self_conditioning, image_size=size)


def perturb(net, scale=0.1):
    """Move every parameter off its initialisation (the zero-initialised layers included)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def state(b, c, h, w, dtype=torch.float32, seed=0, **extra):
    g = torch.Generator().manual_seed(seed)
    return State.dense(image=torch.randn(b, c, h, w, generator=g, dtype=dtype), **extra)


def t_of(b, dtype=torch.float32):
    return torch.linspace(0.1, 0.9, b, dtype=dtype)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [(8, 8), (25, 25), (28, 20)])
def test_shape_follows_odd_sizes_and_output_starts_at_zero(kind, size):
    net = tiny(kind, size=size)
    x = state(2, 3, *size)
    out = net(x, t_of(2))
    assert isinstance(out, State) and out.names == ["image"]
    assert out["image"].shape == x["image"].shape
    assert torch.count_nonzero(out["image"]) == 0
    perturbed = perturb(net)(x, t_of(2))["image"]
    assert perturbed.shape == x["image"].shape and torch.isfinite(perturbed).all()
    assert perturbed.abs().max() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter(kind):
    net = perturb(tiny(kind, num_classes=3, cond_channels=2, self_conditioning=True, size=(9, 7)))
    x = state(3, 3, 9, 7, **{"sc:image": torch.randn(3, 3, 9, 7)})
    cond = {"label": torch.tensor([0, 2, 3]), "lowres": torch.randn(3, 2, 9, 7)}
    loss = net(x, t_of(3), cond)["image"].pow(2).mean()
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.count_nonzero(p.grad)]
    assert not missing


@pytest.mark.parametrize("kind", KINDS)
def test_zero_init_layers_get_gradients_after_one_step(kind):
    """From the plain initialisation, one optimizer step moves the output off zero."""
    net = tiny(kind)
    x = state(2, 3, 8, 8)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = (net(x, t_of(2))["image"] - 1.0).pow(2).mean()
    loss.backward()
    opt.step()
    assert net(x, t_of(2))["image"].abs().max() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_examples_do_not_mix(kind):
    net = perturb(tiny(kind, num_classes=2, cond_channels=1, self_conditioning=True, size=(10, 9)).double()).eval()
    g = torch.Generator().manual_seed(3)
    img, sc, low = (torch.randn(4, c, 10, 9, generator=g, dtype=torch.float64) for c in (3, 3, 1))
    lab, t = torch.tensor([1, 0, 2, 1]), t_of(4, torch.float64)
    ref = net(State.dense(image=img, **{"sc:image": sc}), t, {"label": lab, "lowres": low})["image"][0]
    img2, sc2, low2 = img.clone(), sc.clone(), low.clone()
    for a in (img2, sc2, low2):
        a[1:] = torch.randn(a[1:].shape, generator=g, dtype=torch.float64) * 3
    t2 = t.clone()
    t2[1:] = torch.tensor([0.05, 0.5, 0.99], dtype=torch.float64)
    out = net(State.dense(image=img2, **{"sc:image": sc2}), t2, {"label": torch.tensor([1, 2, 1, 0]),
                                                                   "lowres": low2})["image"][0]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    single = net(State.dense(image=img[:1], **{"sc:image": sc[:1]}), t[:1], {"label": lab[:1], "lowres": low[:1]})
    torch.testing.assert_close(single["image"][0], ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_null_label(kind):
    net = perturb(tiny(kind, num_classes=3)).eval()
    x = state(2, 3, 8, 8)
    t = t_of(2)
    with torch.no_grad():
        null = net(x, t, {"label": torch.tensor([3, 3])})["image"]
        for cond in ({"label": torch.tensor([-1, -1])}, None, {}, {"label": None}, {"label": 3}):
            torch.testing.assert_close(net(x, t, cond)["image"], null, rtol=0, atol=0)
        other = net(x, t, {"label": torch.tensor([0, 1])})["image"]
    assert (other - null).abs().amax(dim=(1, 2, 3)).min() > 1e-4
    with pytest.raises(ValueError, match="null label"):
        net(x, t, {"label": torch.tensor([4, 0])})


@pytest.mark.parametrize("kind", KINDS)
def test_lowres_condition(kind):
    net = perturb(tiny(kind, cond_channels=3, size=(9, 9))).eval()
    x = state(2, 3, 9, 9)
    low = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        a = net(x, t_of(2), {"lowres": low})["image"]
        b = net(x, t_of(2), {"lowres": low + 1.0})["image"]
    assert (a - b).abs().amax(dim=(1, 2, 3)).min() > 1e-4
    for cond in (None, {}, {"label": torch.tensor([0, 1])}):
        with pytest.raises(ValueError, match="lowres"):
            net(x, t_of(2), cond)
    with pytest.raises(ValueError, match="lowres"):
        net(x, t_of(2), {"lowres": torch.randn(2, 3, 4, 4)})


@pytest.mark.parametrize("kind", KINDS)
def test_self_conditioning_absent_is_zeros(kind):
    net = perturb(tiny(kind, self_conditioning=True)).eval()
    x = state(2, 3, 8, 8)
    with torch.no_grad():
        absent = net(x, t_of(2))["image"]
        zeros = net(x.with_prefixed(x.map(lambda k, v: torch.zeros_like(v)), "sc:"), t_of(2))
        given = net(x.with_prefixed(x.map(lambda k, v: torch.ones_like(v)), "sc:"), t_of(2))["image"]
    assert zeros.names == ["image"]
    torch.testing.assert_close(zeros["image"], absent, rtol=0, atol=0)
    assert (given - absent).abs().max() > 1e-4


def test_self_conditioning_channels_only_when_asked():
    plain, sc = tiny("unet"), tiny("unet", self_conditioning=True)
    assert plain.conv_in.in_channels == 3 and sc.conv_in.in_channels == 6
    assert tiny("dit", cond_channels=2, self_conditioning=True).patchify.in_channels == 8


def count_attention(net):
    return sum(isinstance(m, SelfAttention2d) for m in net.modules())


@pytest.mark.parametrize("size, attention_res, levels_with_attention", [
    ((32, 32), 16, [False, True, True]),   # maps 32, 16, 8
    ((32, 32), 8, [False, False, True]),
    ((32, 32), 0, [False, False, False]),
    ((30, 17), 8, [False, False, True]),   # padded to 32 x 20: longer sides 32, 16, 8
    ((8, 8), 16, [True, True, True]),
    (None, 16, [False, False, False]),      # unknown size: only the middle
])
def test_attention_exactly_at_the_levels_the_rule_says(size, attention_res, levels_with_attention):
    assert attention_levels(size, 3, attention_res) == levels_with_attention
    res_blocks = 2
    net = ImageUNet(1, channels=8, mults=(1, 2, 2), res_blocks=res_blocks, attention_res=attention_res, heads=2,
                    image_size=size)
    per_level = res_blocks + (res_blocks + 1)  # after each down block and each up block
    assert count_attention(net) == 1 + per_level * sum(levels_with_attention)
    assert isinstance(net.mid[1], SelfAttention2d)
    for i, attends in enumerate(levels_with_attention):
        assert all((len(mods) == 2) == attends for mods in net.down[i])
        assert all((len(mods) == 2) == attends for mods in net.up[len(net.up) - 1 - i])


def test_attention_block_starts_as_identity_and_is_multi_head():
    att = SelfAttention2d(8, heads=4)
    x = torch.randn(2, 8, 5, 3)
    torch.testing.assert_close(att(x), x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="heads"):
        SelfAttention2d(6, heads=4)


def test_unet_uses_the_core_residual_block():
    net = tiny("unet")
    assert any(isinstance(m, ResBlock) for m in net.modules())


def test_build_network_defaults_and_choices():
    unet = build_network({}, 1, 10)
    assert isinstance(unet, ImageUNet) and unet.label_emb.num_embeddings == 11
    assert unet.conv_in.out_channels == 64 and len(unet.down) == 3 and len(unet.down[0]) == 2
    assert unet.time_mlp[0].out_features == 256
    dit = build_network({"network": "dit"}, 3, 0)
    assert isinstance(dit, ImageDiT) and len(dit.blocks) == 6 and dit.hidden == 192 and dit.patch == 2
    assert dit.label_emb is None
    with pytest.raises(InputError, match="model.network") as err:
        build_network({"network": "vit"}, 1, 0)
    assert "'unet'" in str(err.value) and "'dit'" in str(err.value)
    with pytest.raises(InputError, match="heads"):
        build_network({"network": "dit", "hidden": 20, "heads": 3}, 1, 0)


def test_dit_adaln_zero_blocks_start_as_identity():
    net = tiny("dit", num_classes=2)
    for blk in net.blocks:
        assert torch.count_nonzero(blk.ada[1].weight) == 0 and torch.count_nonzero(blk.ada[1].bias) == 0
    tokens, c = torch.randn(2, 16, 16), torch.randn(2, 16)
    for blk in net.blocks:
        torch.testing.assert_close(blk(tokens, c), tokens, rtol=0, atol=0)
        gates = blk.ada(c).chunk(6, dim=1)
        assert torch.count_nonzero(gates[2]) == 0 and torch.count_nonzero(gates[5]) == 0
    assert isinstance(net.blocks[0], DiTBlock)
    assert torch.count_nonzero(net.linear_out.weight) == 0 and torch.count_nonzero(net.ada_out[1].weight) == 0


def test_dit_patches_cover_the_padded_image():
    net = perturb(tiny("dit")).eval()
    x = state(1, 3, 7, 5)
    with torch.no_grad():
        out = net(x, t_of(1))["image"]
        # a (7, 5) image is zero-padded at the end to (8, 6): the same as padding it by hand
        assert out.shape == (1, 3, 7, 5)
        full = net.forward_tensor(torch.nn.functional.pad(x["image"], (0, 1, 0, 1)), t_of(1))
    torch.testing.assert_close(full[:, :, :7, :5], out, rtol=0, atol=0)
