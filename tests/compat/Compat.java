// One GET with java.net.http.HttpClient through a proxy, the way a Java 17
// service is configured: ProxySelector.of(...) plus an Authenticator.
//
// Run as a single-file program:
//   java [-Djdk.http.auth.tunneling.disabledSchemes=] Compat.java \
//        PROXY_HOST PROXY_PORT USER|- PASSWORD_HEX|- URL CA_PEM
//
// The password comes as the hex of its UTF-8 bytes so that the command line's
// encoding (the locale) cannot change it. "-" for USER means no Authenticator.
// Prints "STATUS <code>" and the body, or "EXCEPTION <class>: <message>";
// exits 0 either way (the driver asserts on the output).

import java.io.FileInputStream;
import java.net.Authenticator;
import java.net.InetSocketAddress;
import java.net.PasswordAuthentication;
import java.net.ProxySelector;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.security.cert.CertificateFactory;
import java.time.Duration;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

public class Compat {
    public static void main(String[] args) throws Exception {
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        String user = args[2];
        String password = args[3].equals("-") ? "" : fromHex(args[3]);
        URI uri = URI.create(args[4]);

        HttpClient.Builder b = HttpClient.newBuilder()
                .proxy(ProxySelector.of(new InetSocketAddress(host, port)))
                .connectTimeout(Duration.ofSeconds(20))
                .sslContext(trusting(args[5]));
        if (!user.equals("-")) {
            b.authenticator(new Authenticator() {
                @Override
                protected PasswordAuthentication getPasswordAuthentication() {
                    // Proxy credentials only: an origin's 401 must reach the caller.
                    if (getRequestorType() != RequestorType.PROXY) {
                        return null;
                    }
                    return new PasswordAuthentication(user, password.toCharArray());
                }
            });
        }
        HttpClient client = b.build();
        HttpRequest req = HttpRequest.newBuilder(uri).timeout(Duration.ofSeconds(30)).GET().build();
        try {
            HttpResponse<String> r = client.send(req, HttpResponse.BodyHandlers.ofString());
            System.out.println("STATUS " + r.statusCode());
            System.out.println(r.body());
        } catch (Exception e) {
            System.out.println("EXCEPTION " + e.getClass().getName() + ": " + e.getMessage());
        }
    }

    static String fromHex(String hex) {
        byte[] out = new byte[hex.length() / 2];
        for (int i = 0; i < out.length; i++) {
            out[i] = (byte) Integer.parseInt(hex.substring(2 * i, 2 * i + 2), 16);
        }
        return new String(out, StandardCharsets.UTF_8);
    }

    static SSLContext trusting(String caPem) throws Exception {
        KeyStore ks = KeyStore.getInstance(KeyStore.getDefaultType());
        ks.load(null, null);
        try (FileInputStream in = new FileInputStream(caPem)) {
            ks.setCertificateEntry("compat-ca", CertificateFactory.getInstance("X.509").generateCertificate(in));
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(ks);
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(null, tmf.getTrustManagers(), null);
        return ctx;
    }
}
