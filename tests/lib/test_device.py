import pytest
import torch

from gradlab import DeviceUnavailableError, describe_device, resolve_device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_auto_matches_torch_availability():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected


@pytest.mark.parametrize("request_", ["cpu", "CPU", " cpu ", torch.device("cpu")])
def test_cpu_forms(request_):
    assert resolve_device(request_) == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("request_", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_request_without_gpu_says_what_to_do(request_):
    with pytest.raises(DeviceUnavailableError, match="device='auto'.*device='cpu'") as info:
        resolve_device(request_)
    assert "Colab" in str(info.value)
    assert isinstance(info.value, RuntimeError)


@cuda
def test_cuda_index_out_of_range():
    with pytest.raises(DeviceUnavailableError, match="only"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@cuda
def test_cuda_resolves():
    assert resolve_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "mps:0", "", "cuda:-1"])
def test_malformed_request(bad):
    with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device(bad)


def test_wrong_type():
    with pytest.raises(TypeError, match="device must be a string"):
        resolve_device(0)


def test_describe_cpu():
    assert describe_device("cpu") == "cpu"
