"""medfed.client: the hospital side: data, task models, local training, the Flower ClientApp."""
