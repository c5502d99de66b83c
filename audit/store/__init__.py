"""Where results live: the FiftyOne database (`db`), the scan lock (`lock`), files written atomically (`outfile`)."""
