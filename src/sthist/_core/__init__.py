"""Internal helpers shared by the public layers: element resolution, physical scale, input checks."""
