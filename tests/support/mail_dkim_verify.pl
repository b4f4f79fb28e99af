#!/usr/bin/perl
# Verifies the DKIM signatures of messages with Debian's Mail::DKIM, looking the keys up on one nameserver.
#
# Usage: mail_dkim_verify.pl HOST PORT < messages
# Each message on standard input is preceded by a line holding its length in bytes. For each message one
# line of JSON is printed: a list of {algorithm, domain, selector, result, detail}, one per signature.
use strict;
use warnings;

use JSON::PP;
use Mail::DKIM::DNS;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;

my ($host, $port) = @ARGV;
die "usage: $0 HOST PORT < messages\n" unless defined $port;

# Only the test's authoritative server, over UDP with TCP when a reply comes back truncated.
Mail::DKIM::DNS::resolver(
    Net::DNS::Resolver->new(
        nameservers => [$host],
        port        => $port,
        recurse     => 0,
        retry       => 1,
        udp_timeout => 5,
        tcp_timeout => 5,
    )
);

binmode STDIN;
binmode STDOUT, ':encoding(UTF-8)';
$| = 1;
my $json = JSON::PP->new->canonical;

while (defined(my $header = <STDIN>)) {
    chomp $header;
    die "expected a message length, got '$header'\n" unless $header =~ /^\d+$/;
    my $message = '';
    while (length($message) < $header) {
        my $read = read(STDIN, $message, $header - length($message), length($message));
        die "message ended after " . length($message) . " of $header bytes\n" unless $read;
    }
    my $dkim = Mail::DKIM::Verifier->new();
    $message =~ s/\015?\012/\015\012/g;
    $dkim->PRINT($message);
    $dkim->CLOSE();
    my @results = map {
        {
            algorithm => $_->algorithm // '',
            domain    => $_->domain // '',
            selector  => $_->selector // '',
            result    => $_->result // '',
            detail    => $_->result_detail // '',
        }
    } $dkim->signatures;
    print $json->encode(\@results), "\n";
}
