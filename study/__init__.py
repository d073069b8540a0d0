"""What every part of medfed agrees on: the study configuration, its data
(readers, phantoms, partitions), the task (models, local training,
evaluation) and the results schema.

Both the hospital (`client/`) and the coordinator (`server/`) import this
package; it imports neither of them. Imports flow
encryption <- study <- client, server <- simulations.
"""

from study.config import STRATEGIES, Study, StudyError, parse_overrides

__all__ = ["STRATEGIES", "Study", "StudyError", "parse_overrides"]
