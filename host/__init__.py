"""Host side: the main job, and (later) the serial tools that evaluate a board."""
