#!/usr/bin/perl
# Verify DKIM signatures with Mail::DKIM (shares no code with dkimpy), resolving keys only
# through the test DNS server given on the command line. Prints one line per signature:
#   RESULT ALGORITHM DOMAIN SELECTOR DETAIL
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Mail::DKIM::DNS;
use Net::DNS::Resolver;

my ($port, $file) = @ARGV;
my $res = Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $port, recurse => 0,
    udp_timeout => 5, tcp_timeout => 5, retry => 1, searchlist => [], defnames => 0,
);
Mail::DKIM::DNS::resolver($res);
my $v = Mail::DKIM::Verifier->new();
open(my $fh, '<:raw', $file) or die "open $file: $!";
while (my $line = <$fh>) {
    $v->PRINT($line);
}
close($fh);
$v->CLOSE;
foreach my $sig ($v->signatures) {
    my $detail = $sig->result_detail // '';
    $detail =~ s/\s+/_/g;
    printf "%s %s %s %s %s\n", $sig->result, $sig->algorithm // '-', $sig->domain // '-',
        $sig->selector // '-', $detail;
}
printf "OVERALL %s\n", $v->result // 'none';
