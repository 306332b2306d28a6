<?php
// Form codec benchmark, the PHP side (bench/form.sh runs it): parse_str and http_build_query on
// the cases form_bench.lua built, measured the same way as the Lua side (iterations for about
// SECONDS, then the best of 3 runs of exactly that many).
//   php form_bench.php cases.json SECONDS
// Result lines: "<decode|encode>\t<name>\t<bytes>\t<MB/s>".

$cases = json_decode(file_get_contents($argv[1]), true, 512, JSON_THROW_ON_ERROR);
$seconds = (float)($argv[2] ?? 1);

function best(callable $fn, float $seconds): array
{
    $n = 1;
    while (true) {
        $t0 = hrtime(true);
        $fn($n);
        $dt = (hrtime(true) - $t0) / 1e9;
        if ($dt >= 0.1) {
            $n = max(1, (int)round($n * $seconds / $dt));
            break;
        }
        $n *= 2;
    }
    $t = INF;
    for ($i = 0; $i < 3; $i++) {
        gc_collect_cycles();
        $t0 = hrtime(true);
        $fn($n);
        $t = min($t, (hrtime(true) - $t0) / 1e9);
    }
    return [$n, $t];
}

foreach ($cases['decode'] as $case) {
    $body = $case['body'];
    [$n, $t] = best(function (int $k) use ($body) {
        for ($i = 0; $i < $k; $i++) {
            parse_str($body, $r);
        }
    }, $seconds);
    printf("decode\t%s\t%d\t%.1f\n", $case['name'], strlen($body), strlen($body) * $n / $t / 1e6);
}

foreach ($cases['encode'] as $case) {
    $params = $case['params'];
    $len = strlen(http_build_query($params));
    [$n, $t] = best(function (int $k) use ($params) {
        for ($i = 0; $i < $k; $i++) {
            http_build_query($params);
        }
    }, $seconds);
    printf("encode\t%s\t%d\t%.1f\n", $case['name'], $len, $len * $n / $t / 1e6);
}
