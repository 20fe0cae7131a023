<?php
// A stand-in for a PHP site's front controller.
require __DIR__ . '/wp-content/themes/plain/header.php';
echo "<p>Hello from the example site.</p>\n";
