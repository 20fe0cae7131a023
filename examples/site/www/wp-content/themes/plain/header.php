<?php echo "<!doctype html><title>Example</title>\n";
