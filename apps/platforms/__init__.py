"""AI platform adapters ("Phase 3"). No Django models here and no imports from the engine."""
