"""Tiny learnable client data shared by the runner tests (not a test module)."""
import torch


def client_data(clients: int, shape: tuple, samples_per_client: int = 20, seed: int = 0):
    """(x, y, client_indices [clients, samples_per_client]): class k shifts the images by 0.5·k."""
    gen = torch.Generator().manual_seed(seed)
    total = clients * samples_per_client
    y = torch.arange(total) % 10
    x = torch.randn(total, *shape, generator=gen) + 0.5 * y.view(-1, 1, 1, 1).float()
    return x, y, torch.arange(total).view(clients, samples_per_client)
